"""docs/BENCHMARKS.md and its plot, from the results of one run (bench/results/latest.json).

Every ratio is oriented so that above 1 means studiolo is better: throughput divided by the
peer's, latency of the peer divided by studiolo's. The hand-written analysis in bench/NOTES.md
is appended as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import decisions, messages, sdk, speculative, vision

PEERS = ("llama-server", "llama-cpp-python")
NOTES = Path(__file__).with_name("NOTES.md")


def _aggregate(figures: dict) -> dict[int, float]:
    return {int(k): v for k, v in figures["aggregate_tps"].items()}


def _rows(figures: dict, concurrency: list[int]) -> list[tuple[str, float, bool]]:
    """(label, value, higher is better) for every figure of one target."""
    rows = [
        ("single-stream decode, tok/s", figures["decode_tps"], True),
        ("prefill, 1,000-token prompt, tok/s", figures["prefill_tps"], True),
        ("time to first token, 16-token prompt, ms", figures["ttft_short_s"] * 1000, False),
        ("time to first token, 1,000-token prompt, ms", figures["ttft_long_s"] * 1000, False),
    ]
    aggregate = _aggregate(figures)
    rows += [(f"aggregate decode, {k} stream{'s' * (k > 1)}, tok/s", aggregate[k], True) for k in concurrency]
    if "followup_ttft_s" in figures:  # not measured on the models with fewer figures (bench/config.py)
        rows += [
            (f"chat turn {figures.get('chat_turns', '')} follow-up, time to first token, ms".replace("  ", " "),
             figures["followup_ttft_s"] * 1000, False),
            ("same prompt cold, time to first token, ms", figures["cold_ttft_s"] * 1000, False),
        ]
    return rows


def _ratio(ours: float | None, theirs: float | None, higher_better: bool) -> str:
    if not ours or not theirs:
        return "n/a"
    return f"{(ours / theirs if higher_better else theirs / ours):.2f}"


NOT_MEASURED = "not measured yet"


def _rate(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:,.1f}"


def sampled_settings(results: dict) -> str:
    """The sampled figures' settings as the report names them (from the run, else bench/config.py)."""
    from bench.config import SAMPLED

    settings = results.get("sampled") or SAMPLED
    return ", ".join(f"{name} {value}" for name, value in settings.items())


def _greedy_and_sampled(figures: dict, streams: int) -> tuple[float | None, ...]:
    """Single-stream decode greedy and sampled, then aggregate at ``streams`` greedy and sampled."""
    aggregate = _aggregate(figures) if "aggregate_tps" in figures else {}
    return (figures.get("decode_tps"), figures.get("sampled_decode_tps"),
            aggregate.get(streams), figures.get("sampled_aggregate_tps"))


def _sampling_lines(model: dict, results: dict) -> list[str]:
    """Greedy and sampled decoding side by side, per server, and studiolo over each peer."""
    streams = int(results["config"].get("sampled_streams", 8))
    rows = {**model["servers"], "studiolo in-process": model["in_process"]}
    lines = ["Greedy and sampled decoding, side by side. Sampled: LM Studio's default settings, "
             f"{sampled_settings(results)}, the same on every server; end-of-generation tokens banned in both, so every stream generates "
             "what it asks. Tokens per second:", "",
             f"| server | 1 stream, greedy | 1 stream, sampled | sampled / greedy | {streams} streams, greedy | "
             f"{streams} streams, sampled | sampled / greedy |", "|" + " --- |" * 7]
    for name, figures in rows.items():
        single, single_sampled, many, many_sampled = _greedy_and_sampled(figures, streams)
        lines.append(f"| {name} | {_rate(single)} | {_rate(single_sampled)} | {_ratio(single_sampled, single, True)} "
                     f"| {_rate(many)} | {_rate(many_sampled)} | {_ratio(many_sampled, many, True)} |")
    ours = _greedy_and_sampled(model["servers"]["studiolo"], streams)
    for peer in (p for p in PEERS if p in model["servers"]):
        theirs = _greedy_and_sampled(model["servers"][peer], streams)
        ratios = [_ratio(a, b, True) for a, b in zip(ours, theirs, strict=True)]
        lines.append(f"| studiolo / {peer} | {ratios[0]} | {ratios[1]} |  | {ratios[2]} | {ratios[3]} |  |")
    return lines + [""]


def _model_table(model: dict, concurrency: list[int]) -> list[str]:
    servers = model["servers"]
    peers = [p for p in PEERS if p in servers]
    head = "| figure | studiolo | " + " | ".join(f"{p} | vs {p}" for p in peers) + " |"
    lines = [head, "|" + " --- |" * (2 + 2 * len(peers))]
    ours = _rows(servers["studiolo"], concurrency)
    theirs = {p: _rows(servers[p], concurrency) for p in peers}
    for i, (label, value, higher) in enumerate(ours):
        cells = [label, f"{value:,.1f}"]
        for p in peers:
            cells += [f"{theirs[p][i][1]:,.1f}", _ratio(value, theirs[p][i][1], higher)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _overhead_table(model: dict, concurrency: list[int]) -> list[str]:
    http, local = model["servers"]["studiolo"], model["in_process"]
    lines = ["| figure | in-process | over HTTP + SSE | HTTP and SSE cost |", "| --- | --- | --- | --- |"]
    for (label, over_http, higher), (_, inside, _) in zip(_rows(http, concurrency), _rows(local, concurrency)):
        cost = (1 - over_http / inside) if higher else (over_http / inside - 1)
        lines.append(f"| {label} | {inside:,.1f} | {over_http:,.1f} | {cost * 100:+.1f}% |")
    return lines


def _ceiling_lines(model: dict, limit: float) -> list[str]:
    raw = model.get("raw_decode_tps")
    if not raw:
        return []
    shares = ", ".join(f"{name} {figures['decode_tps'] / raw * 100:.0f}%" for name, figures in model["servers"].items())
    return [f"llama.cpp's bare decode loop on the same context (bench/ceiling.py: llama_decode and an argmax, "
            f"nothing else) gives {raw:.0f} tok/s, {raw / limit * 100:.0f}% of the bandwidth limit. Single-stream "
            f"decode as a share of that loop: {shares}."]


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the issue's targets, on every model; met is None when not measured."""
    checks = []
    for key, model in results["models"].items():
        ours, server = model["servers"]["studiolo"], model["servers"].get("llama-server")
        aggregate = _aggregate(ours)
        if server:
            ratio = ours["decode_tps"] / server["decode_tps"]
            checks.append((f"{key}: single-stream decode >= 1.0x llama-server", f"{ratio:.2f}x", ratio >= 1.0))
            if 8 in aggregate:
                ratio = aggregate[8] / _aggregate(server)[8]
                checks.append((f"{key}: aggregate decode at 8 streams >= 1.0x llama-server", f"{ratio:.2f}x", ratio >= 1.0))
            checks += _sampled_targets(key, ours, server)
        share = ours["decode_tps"] / model["decode_limit_tps"]
        checks.append((f"{key}: single-stream decode >= 80% of the bandwidth limit", f"{share * 100:.0f}%", share >= 0.8))
        levels = sorted(aggregate)
        cores = results["machine"]["cores"]
        rising = all(aggregate[b] >= aggregate[a] * 0.98 for a, b in zip(levels, levels[1:]) if a < max(cores, 2) * 8)
        checks.append((f"{key}: aggregate decode rises with concurrency", " -> ".join(f"{aggregate[k]:.0f}" for k in levels), rising))
        cost = 1 - ours["decode_tps"] / model["in_process"]["decode_tps"]
        checks.append((f"{key}: HTTP and SSE cost <= 3% of in-process decode", f"{cost * 100:.1f}%", cost <= 0.03))
        if "followup_ttft_s" in ours:
            ratio = ours["followup_ttft_s"] / ours["cold_ttft_s"]
            checks.append((f"{key}: chat follow-up TTFT <= 0.3x cold", f"{ratio:.2f}x", ratio <= 0.3))
        if "json_constrained_tps" in ours:
            ratio = ours["json_constrained_tps"] / ours["json_free_tps"]
            checks.append((f"{key}: JSON-schema-constrained decode >= 0.9x free decode", f"{ratio:.2f}x", ratio >= 0.9))
        compile_ms = model["constraints"]["compile_typical_ms"]
        checks.append((f"{key}: compile a typical schema < 50 ms", f"{compile_ms:.1f} ms", compile_ms < 50))
        if "stateful_ttft_s" in ours:
            first, last = _turns(ours)[0], _turns(ours)[-1]
            ratio = last[1] / first[1]
            checks.append((f"{key}: stateful chat: turn {last[0]} time to first token within 1.5x turn {first[0]}",
                           f"{last[1] * 1000:.0f} ms vs {first[1] * 1000:.0f} ms ({ratio:.2f}x)", ratio <= 1.5))
    embeddings = results.get("embeddings")
    if embeddings and {"studiolo", "llama-server"} <= set(embeddings["servers"]):
        ratios = embedding_ratios(embeddings)
        batches = sorted(ratios)
        checks.append(("embeddings: throughput >= 1.0x llama-server at batch "
                       + ", ".join(map(str, batches[:-1])) + f" and {batches[-1]}",
                       ", ".join(f"{b}: {ratios[b]:.2f}x" for b in batches), min(ratios.values()) >= 1.0))
    return (checks + speculative.targets(results.get("speculative")) + vision.targets(results.get("vision"))
            + messages.targets(results.get("messages")) + sdk.targets(results.get("sdk"))
            + decisions.targets(results.get("decisions")))


def _sampled_targets(key: str, ours: dict, server: dict) -> list[tuple[str, str, bool | None]]:
    """Sampled decoding >= 1.0x llama-server with the same settings, one stream and several."""
    streams = ours.get("sampled_aggregate_streams", 8)
    checks = []
    for figure, label in (("sampled_decode_tps", "single-stream decode"),
                          ("sampled_aggregate_tps", f"aggregate decode at {streams} streams")):
        name = f"{key}: sampled {label} >= 1.0x llama-server, same settings"
        if figure in ours and figure in server:
            ratio = ours[figure] / server[figure]
            checks.append((name, f"{ratio:.2f}x", ratio >= 1.0))
        else:
            checks.append((name, NOT_MEASURED, None))
    return checks


def embedding_ratios(embeddings: dict) -> dict[int, float]:
    """studiolo's inputs per second over llama-server's, per inputs per request."""
    ours = embeddings["servers"]["studiolo"]["embedding_inputs_per_s"]
    theirs = embeddings["servers"]["llama-server"]["embedding_inputs_per_s"]
    return {int(batch): ours[batch] / theirs[batch] for batch in ours}


def _embedding_lines(embeddings: dict | None) -> list[str]:
    """Inputs per second at each request size, studiolo against llama-server, on the embedding model."""
    if not embeddings or "studiolo" not in embeddings["servers"]:
        return []
    servers = embeddings["servers"]
    peers = [name for name in servers if name != "studiolo"]
    run = embeddings.get("run") or {}
    when = (f" Measured {run['date']} by `{run['by']}`, apart from the rest of this report."
            if run.get("by") and run["by"] != "make bench" else "")
    tokens = ", ".join(f"{name} {count:.1f}" for name, count in embeddings.get("mean_tokens", {}).items())
    low, high = embeddings["words"]
    slots, batch = embeddings["llama_server_slots"], embeddings["batch_tokens"]
    lines = [f"## Embeddings: {embeddings['model']} ({embeddings['file_bytes'] / 1e6:.0f} MB)", "",
             f"bench/embeddings.py: {embeddings['inputs']} sentences of {low}-{high} words (mean "
             f"{embeddings['mean_words']:.1f} words; tokens per input as each server counts them: {tokens}) sent "
             "to `POST /v1/embeddings` (`encoding_format` float) so many inputs per request, one request at a "
             "time; inputs per second over the requests' summed time, each to the last byte of its body, median "
             f"of {embeddings['repeats']} runs. studiolo's EmbeddingEngine packs up to {slots} inputs and "
             f"{batch:,} tokens into one forward pass; llama-server runs the same GGUF with `--embedding --pooling "
             f"mean`, {slots} slots and a batch and ubatch of {batch:,} tokens, so it can do the same. Every "
             "response is checked (one 384-dimension unit vector per input), and both servers' vectors for every "
             f"input, at every request size, agree: least cosine {embeddings['min_cosine']:.6f}." + when, "",
             "| inputs per request | studiolo, inputs/s | " + " | ".join(f"{p}, inputs/s | vs {p}" for p in peers)
             + " |", "|" + " --- |" * (2 + 2 * len(peers))]
    ours = servers["studiolo"]["embedding_inputs_per_s"]
    for size, rate in sorted(ours.items(), key=lambda item: int(item[0])):
        cells = [size, f"{rate:,.1f}"]
        for p in peers:
            theirs = servers[p]["embedding_inputs_per_s"].get(size)
            cells += [f"{theirs:,.1f}", _ratio(rate, theirs, True)] if theirs else ["n/a", "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _constrained_lines(model: dict) -> list[str]:
    """Free and JSON-constrained decode of the same prompt, per server that takes a schema."""
    if not any("json_constrained_tps" in figures for figures in model["servers"].values()):
        return []
    lines = ["Constrained decoding (bench/constrained.py: the same prompt free, then held to a JSON schema of "
             "records; single stream):", "", "| server | free, tok/s | JSON schema, tok/s | constrained / free |",
             "| --- | --- | --- | --- |"]
    for name, figures in model["servers"].items():
        if "json_constrained_tps" in figures:
            free, constrained = figures["json_free_tps"], figures["json_constrained_tps"]
            lines.append(f"| {name} | {free:,.1f} | {constrained:,.1f} | {_ratio(constrained, free, True)} |")
    times = model["constraints"]
    lines += ["", f"Compile (studiolo, llguidance; median of 20, each on an empty cache, first mask included): "
              f"a typical schema {times['compile_typical_ms']:.1f} ms, the benchmark's schema "
              f"{times['compile_bench_ms']:.1f} ms; the model's vocabulary for llguidance, built once per model: "
              f"{times['tokenizer_build_s']:.2f} s.", ""]
    return lines


def _turns(figures: dict) -> list[tuple[int, float]]:
    """(turn, time to first token in seconds) of the stateful chat, in turn order."""
    return sorted((int(turn), seconds) for turn, seconds in figures["stateful_ttft_s"].items())


def _stateful_lines(model: dict, config: dict) -> list[str]:
    """Time to first token of a long chat's turns, studiolo continuing a stored response and
    llama-server given the whole history (its prompt cache on)."""
    servers = {name: figures for name, figures in model["servers"].items() if "stateful_ttft_s" in figures}
    if "studiolo" not in servers:
        return []
    peers = [name for name in servers if name != "studiolo"]
    run = model.get("stateful_run")
    when = (f" Measured {run['date']} by `python -m bench.stateful`, apart from the rest of this report "
            f"(median of {run['repeats']} conversations)." if run else "")
    lines = [f"Stateful chat (bench/stateful.py: a {config.get('stateful_turns', 10)}-turn conversation, each user "
             f"message {config.get('stateful_message_tokens', 60)} tokens, answers of at most "
             f"{config.get('stateful_reply_tokens', 64)} tokens, greedy; time to first streamed text, ms). "
             "studiolo is sent only the new message and `previous_response_id` (`POST /api/v1/chat`); "
             "llama-server is sent the whole history, its own answers included (`/v1/chat/completions`), "
             "with its prompt cache on (`cache_prompt`, its default), so each slot keeps the conversation "
             "and it too prefills only the new turn: the fair comparison." + when, "",
             "| turn | studiolo | " + " | ".join(f"{p} | vs {p}" for p in peers) + " |",
             "|" + " --- |" * (2 + 2 * len(peers))]
    ours = dict(_turns(servers["studiolo"]))
    for turn, seconds in ours.items():
        cells = [str(turn), f"{seconds * 1000:,.0f}"]
        for p in peers:
            theirs = dict(_turns(servers[p])).get(turn)
            cells += [f"{theirs * 1000:,.0f}", _ratio(seconds, theirs, False)] if theirs else ["n/a", "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    last = max(ours)
    cells = [f"prompt at turn {last}, tokens", f"{servers['studiolo']['stateful_prompt_tokens']:,}"]
    for p in peers:
        cached = servers[p].get("stateful_cached_tokens")
        from_cache = f" ({cached:,} from cache)" if cached is not None else ""
        cells += [f"{servers[p]['stateful_prompt_tokens']:,}{from_cache}", ""]
    lines += ["| " + " | ".join(cells) + " |", ""]
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    columns = min(len(models), 2)  # two models a row: four side by side would be too wide to read
    rows = -(-len(models) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    for ax, (key, model) in zip(axes.flat, models.items()):
        for name, figures in model["servers"].items():
            aggregate = _aggregate(figures)
            ax.plot(list(aggregate), list(aggregate.values()), marker="o", label=name)
        inside = _aggregate(model["in_process"])
        ax.plot(list(inside), list(inside.values()), linestyle="--", color="grey", label="studiolo in-process")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(inside), [str(k) for k in inside])
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("aggregate decode, tokens/s")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: dict, plot_name: str, quick: bool) -> str:
    config, machine = results["config"], results["machine"]
    concurrency = list(config["concurrency"])
    out = ["# Benchmarks", ""]
    if quick:
        out += ["> **Quick run** (`--quick`): short prompts and few repeats, for checking the harness only.", ""]
    out += [
        f"Measured {results['date']} by `make bench` in {results['seconds']} s. Each figure is the median of "
        f"{config['repeats']} runs ({config['decode_repeats']} for single-stream decode, the noisiest); every server gets the same prompts, one server at a time.",
        "",
        "## Machine and set-up",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores; {machine['memory_gib']} GiB RAM; Python {machine['python']}",
        f"- Memory bandwidth (STREAM-style triad, {config['threads']} threads): **{results['bandwidth_gbs']:.1f} GB/s**",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        f"- Every server: {config['threads']} threads, {config['slots']} parallel sequences of {config['context']} "
        f"tokens each, batch {config['batch']}, greedy decoding, end-of-generation tokens banned so every request "
        f"generates exactly what it asks; prompts sent to `/v1/completions`, streamed (SSE).",
        f"- Sampled decoding besides, single-stream and at {config.get('sampled_streams', 8)} streams, with LM "
        f"Studio's default settings ({sampled_settings(results)}), the same on every server, end-of-generation "
        "tokens banned as well.",
        "- SmolLM2 and Gemma 3 are measured with every figure on all three servers; the Qwen2.5-Coder models "
        "(Instruct, Q4_K_M) next to llama-server only, with decode, prefill, the concurrency sweep and the "
        "sampled figures.",
        "- llama-server is llama.cpp's own server from the `xllamacpp` wheel (its own build of llama.cpp); "
        "llama-cpp-python's packaged server runs on the same llama.cpp build as studiolo and serves one "
        "request at a time (it has no parallel slots).",
        "",
        "Ratios: above 1 means studiolo is better (throughput over the peer's; the peer's latency over studiolo's).",
        "",
    ]
    for key, model in results["models"].items():
        limit = model["decode_limit_tps"]
        decode = model["servers"]["studiolo"]["decode_tps"]
        out += [f"## {key} ({model['file_bytes'] / 1e6:.0f} MB)", ""]
        out += _model_table(model, concurrency)
        out += [
            "",
            f"Bandwidth limit for single-stream decode: {results['bandwidth_gbs']:.1f} GB/s / "
            f"{model['file_bytes'] / 1e6:.0f} MB = {limit:.0f} tok/s; studiolo reaches {decode / limit * 100:.0f}%.",
            "",
        ]
        out += _ceiling_lines(model, limit)
        out += [
            "",
            "HTTP and SSE overhead (studiolo's engine alone against the same engine behind its HTTP API):",
            "",
        ]
        out += _overhead_table(model, concurrency) + [""]
        out += _sampling_lines(model, results)
        out += _constrained_lines(model)
        out += _stateful_lines(model, config)
    out += [f"![aggregate decode against concurrency]({plot_name})", ""]
    out += _embedding_lines(results.get("embeddings"))
    out += speculative.lines(results.get("speculative"))
    out += vision.lines(results.get("vision"))
    out += messages.lines(results.get("messages"))
    out += sdk.lines(results.get("sdk"))
    out += decisions.lines(results.get("decisions"))
    out += ["## Targets", ""]
    out += ["| target | measured | met |", "| --- | --- | --- |"]
    out += [f"| {name} | {value} | {_met(met)} |" for name, value, met in targets(results)]
    took = "" if quick else f" ({results['seconds'] / 60:.0f} minutes for the run above)"
    out += ["", "## Reproduce", "", "```sh", f"make bench            # the full run{took}",
            "make bench QUICK=1    # a smoke run of the harness", "```", ""]
    return "\n".join(out)


def _met(met: bool | None) -> str:
    return "n/a" if met is None else "yes" if met else "**no**"


def write(results: dict, path: Path, quick: bool = False) -> None:
    plot_name = "benchmarks-concurrency.png"
    plot(results, path.parent / plot_name)
    notes = NOTES.read_text() if NOTES.exists() else ""
    path.write_text(render(results, plot_name, quick) + ("\n" + notes if notes else ""))


def run_section_alone(doc: str, key: str, measure, lines, targets) -> None:
    """``python -m bench.<key>``: measure one section (``measure(config, logs, repeats)``), print it, and
    unless ``--print-only`` put it in bench/results/latest.json and the report, or, without a full run's
    results to rewrite the report from, in place of its own section of the report."""
    import argparse

    from bench.config import BenchConfig
    from bench.run import RESULTS, ROOT

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--print-only", action="store_true", help="leave latest.json and the report alone")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    results = measure(BenchConfig(), RESULTS / key, args.repeats)
    section = lines(results)
    print("\n".join(section), flush=True)
    if args.print_only:
        return
    if not merge_into_latest(RESULTS, args.report, lambda latest: latest.update({key: results})):
        replace_section(args.report, section, targets(results))


def replace_section(report_path: Path, section: list[str], section_targets: list) -> None:
    """Put ``section`` (its first line a ``## `` heading) in place of the report's section of that heading,
    or before its Targets, and its rows in the Targets table: for a section measured on its own when
    no full run's results are at hand to rewrite the whole report from."""
    text = report_path.read_text().splitlines()
    heading = section[0]
    start = text.index(heading) if heading in text else text.index("## Targets")
    end = start
    if heading in text:
        end = next((i for i in range(start + 1, len(text)) if text[i].startswith("## ")), len(text))
    text[start:end] = section
    rows = [f"| {name} | {value} | {_met(met)} |" for name, value, met in section_targets]
    names = {f"| {name} |" for name, _, _ in section_targets}
    table = text.index("## Targets") + 4  # past the heading, a blank line, the head and its rule
    text = text[:table] + [line for line in text[table:] if not any(line.startswith(n) for n in names)]
    last_row = next(i for i in range(table, len(text) + 1) if i == len(text) or not text[i].startswith("|"))
    text[last_row:last_row] = rows
    report_path.write_text("\n".join(text) + "\n")
    print(f"updated the {heading[3:]} section of {report_path}", flush=True)


def merge_into_latest(results_dir: Path, report_path: Path, update) -> bool:
    """Apply ``update`` to bench/results/latest.json (a section measured on its own) and rewrite the
    report from it; False when there is no full run to merge into."""
    from bench.config import BenchConfig

    latest = results_dir / "latest.json"
    if not latest.exists():
        return False
    results = json.loads(latest.read_text())
    update(results)
    latest.write_text(json.dumps(results, indent=2))
    quick = results["config"]["decode_tokens"] == BenchConfig().quick().decode_tokens
    write(results, report_path, quick=quick)
    print(f"updated {latest} and {report_path}", flush=True)
    return True
