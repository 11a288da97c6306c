"""The chat page's files without a browser or a model: the committed bundle is built from the
sources in web/ as they are now (the hash recorded beside it, and, where web/node_modules is
installed, a fresh build byte for byte), each file is served with its type, the page's
Content-Security-Policy and an ETag, and only these files of the page are public."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from studiolo.api.app import create_app
from studiolo.api.auth import route_requirements
from studiolo.api.page.routes import FILES
from studiolo.domain.auth import PUBLIC

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
STATIC = ROOT / "src" / "studiolo" / "api" / "page" / "static"
BUILT = ["SOURCES.sha256", "icon.svg", "index.html", "page.css", "page.js"]


def sources_hash() -> str:
    """web/build.mjs's sourcesHash(): each source's path and length, then its bytes, in path order."""
    files = ["build.mjs", "package.json", "package-lock.json", *(f"src/{p.name}" for p in (WEB / "src").iterdir())]
    digest = hashlib.sha256()
    for name in sorted(files):
        data = (WEB / name).read_bytes()
        digest.update(f"{name}\n{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


def test_the_committed_bundle_is_built_from_the_sources_as_they_are():
    assert sorted(p.name for p in STATIC.iterdir()) == BUILT
    assert (STATIC / "SOURCES.sha256").read_text().strip() == sources_hash(), "run `make page` and commit"


def test_a_fresh_build_is_the_committed_one_byte_for_byte(tmp_path):
    # `make test` installs the build tools (web-deps): their absence is a set-up fault, not a reason to pass
    if not (WEB / "node_modules").is_dir() or shutil.which("node") is None:
        pytest.fail("web/node_modules or node is missing: run `make web-deps` (make test does)")
    subprocess.run(["node", str(WEB / "build.mjs"), str(tmp_path)], check=True, capture_output=True, timeout=120)
    for name in BUILT:
        assert (tmp_path / name).read_bytes() == (STATIC / name).read_bytes(), name


@pytest.fixture(scope="module")
def http():
    with TestClient(create_app(), base_url="http://127.0.0.1:1234") as client:
        yield client


@pytest.mark.parametrize("path", list(FILES))
def test_each_file_is_served_with_its_type_policy_and_etag(http, path):
    name, media_type = FILES[path]
    answer = http.get(path)
    assert answer.status_code == 200 and answer.headers["content-type"] == media_type
    assert answer.content == (STATIC / name).read_bytes()
    policy = answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy and "unsafe" not in policy
    assert answer.headers["x-content-type-options"] == "nosniff"
    again = http.get(path, headers={"If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_the_page_loads_only_its_own_files():
    page = (STATIC / "index.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script>" not in page
    bundle = (STATIC / "page.js").read_text()
    assert "cdn." not in bundle and "fonts.googleapis" not in bundle


def test_the_page_declares_its_files_public_and_nothing_else():
    table = route_requirements(create_app().routes)
    page = {route.path: (need, route.methods) for route, need in table
            if route.endpoint.__module__ == "studiolo.api.page.routes"}
    assert page == {path: (PUBLIC, {"GET"}) for path in FILES}


def test_the_wheel_ships_the_built_page():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"studiolo.api.page" = ["static/*"]' in pyproject
