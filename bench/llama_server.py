"""Run llama.cpp's own server (embedded in the ``xllamacpp`` package) until terminated.

Configured as `llama-server -m MODEL --port P -np N -c N*CTX -t T -tb T -b B` would be: N slots
of CTX tokens each, continuous batching on, prompt cache on (its defaults). ``--embedding
--pooling mean --ubatch U`` as `--embedding --pooling mean -ub U` would: embeddings only.
Speculative decoding: ``--draft-model PATH`` as `-md PATH` (a draft model, its own settings for
the rest: draft lengths, minimum probability), ``--ngram`` as `--spec-type ngram-simple` (drafts
looked up in the context, its default sizes). Images: ``--mmproj PATH`` as `--mmproj PATH`.
"""

from __future__ import annotations

import argparse
import signal
import threading

import xllamacpp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parallel", type=int, required=True)
    parser.add_argument("--context", type=int, required=True, help="tokens per slot")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--ubatch", type=int, default=None, help="physical batch (llama.cpp's default: 512)")
    parser.add_argument("--embedding", action="store_true", help="serve embeddings (/v1/embeddings)")
    parser.add_argument("--pooling", choices=("none", "mean", "cls", "last"), default=None)
    parser.add_argument("--draft-model", default=None, help="speculative decoding with this draft model")
    parser.add_argument("--ngram", action="store_true", help="speculative decoding from n-gram lookups")
    parser.add_argument("--mmproj", default=None, help="a vision projector for the model")
    args = parser.parse_args()

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.context * args.parallel
    params.n_batch = args.batch
    if args.ubatch is not None:
        params.n_ubatch = args.ubatch
    params.embedding = args.embedding
    if args.mmproj is not None:
        params.mmproj.path = args.mmproj
    if args.pooling is not None:
        params.pooling_type = getattr(xllamacpp.llama_pooling_type, f"LLAMA_POOLING_TYPE_{args.pooling.upper()}")
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    kinds = xllamacpp.common_speculative_type
    if args.draft_model is not None:
        params.speculative.types = [kinds.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
        params.speculative.draft.mparams.path = args.draft_model
        params.speculative.draft.cpuparams.n_threads = args.threads
        params.speculative.draft.cpuparams_batch.n_threads = args.threads
    elif args.ngram:
        params.speculative.types = [kinds.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
    server = xllamacpp.Server(params)  # serves from its own threads until deleted

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server


if __name__ == "__main__":
    main()
