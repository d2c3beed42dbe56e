"""The web page without a browser: ``/`` serves it, its static files are served with the right
types, its JS modules import only files that exist, and the files ship in the package."""

from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path

import pytest
from test_server_support import BASE_URL, make_app

from sdgen.ui import INDEX_HTML, STATIC_DIR

ROOT = Path(__file__).resolve().parents[1]
TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}


def _client(tmp_path, **overrides):
    """A TestClient outside ``with``: the app's lifespan (engine, model) never starts, and the
    page and its files need neither."""
    from fastapi.testclient import TestClient

    return TestClient(make_app(tmp_path, **overrides), base_url=BASE_URL)


def test_the_page_is_served_at_the_root(tmp_path):
    response = _client(tmp_path).get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == INDEX_HTML.read_text()
    assert '<script type="module" src="/static/app.js">' in response.text


def test_every_static_file_is_served_with_its_type(tmp_path):
    client = _client(tmp_path)
    referenced = set(re.findall(r'(?:src|href)="/static/([\w.-]+)"', INDEX_HTML.read_text()))
    assert referenced == {"app.js", "style.css"}
    files = sorted(STATIC_DIR.iterdir())
    assert {f.suffix for f in files} == set(TYPES)
    for file in files:
        response = client.get(f"/static/{file.name}")
        assert response.status_code == 200, file.name
        assert response.headers["content-type"].startswith(TYPES[file.suffix]), file.name
        assert response.content == file.read_bytes()
    assert client.get("/static/missing.js").status_code == 404
    assert client.get("/static/../protocol.py").status_code == 404


def test_the_modules_import_only_files_that_exist():
    for module in STATIC_DIR.glob("*.js"):
        for name in re.findall(r'from "\./([\w.-]+)"', module.read_text()):
            assert (STATIC_DIR / name).is_file(), f"{module.name} imports {name}"


def test_every_control_in_the_html_has_a_label():
    """Inputs, selects and textareas with an id need a <label for>; the browser test checks the
    accessible names of everything the scripts add."""
    html = INDEX_HTML.read_text()
    labelled = set(re.findall(r'<label for="([\w-]+)"', html))
    for tag, control_id in re.findall(r'<(input|select|textarea)\b[^>]*\bid="([\w-]+)"', html):
        assert control_id in labelled, f"<{tag} id={control_id}> has no label"


def test_every_named_control_of_the_job_form_is_an_api_field_with_an_error_slot():
    """A control's ``name`` is the field of ``POST /v1/jobs`` it fills, and the server's message
    about that field shows in ``<p id="NAME-error">`` (so its id is the name too). Controls
    without a name (the file input, the brush, "Only masked") are the page's own."""
    from sdgen.server.protocol import JobCreate

    html = INDEX_HTML.read_text()
    form = html[html.index('<form id="job-form"') : html.index("</form>", html.index("job-form"))]
    controls = re.findall(r"<(?:input|select|textarea)\b[^>]*>", form)
    named = [c for c in controls if " name=" in c]
    assert len(named) >= 15  # the mask options included
    for control in named:
        name = re.search(r'\bname="([\w-]+)"', control)[1]
        assert name in JobCreate.model_fields, f"{name} is not a field of POST /v1/jobs"
        assert f'id="{name}"' in control, control
        assert f'<p class="error" id="{name}-error"' in form, f"{name} has no error slot"
    for field in ("mask", "init_image"):  # pictures: no control of their own, a slot all the same
        assert f'<p class="error" id="{field}-error"' in form


def test_the_static_files_are_in_the_package():
    """Found through the package's resources, and matched by pyproject's package-data (so a
    wheel ships them, not only this editable checkout)."""
    static = resources.files("sdgen.ui") / "static"
    names = {entry.name for entry in static.iterdir()}
    assert {"index.html", "style.css", "app.js", "api.js", "form.js", "mask.js"} <= names
    if sys.version_info < (3, 11):
        pytest.skip("tomllib: Python 3.11+")
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["sdgen"]
    package = ROOT / "src" / "sdgen"
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    assert set(STATIC_DIR.iterdir()) <= shipped


def test_with_an_api_key_the_page_itself_opens_without_it(tmp_path):
    client = _client(tmp_path, api_key="secret")
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/").status_code == 200
    assert client.get("/static/app.js").status_code == 200
