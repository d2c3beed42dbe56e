"""A1111's prompt styles (``sdgen serve --styles styles.csv``): read as A1111 reads the file,
applied to an A1111 call's prompts as A1111 applies them, listed at /sdapi/v1/prompt-styles."""

from __future__ import annotations

import json

import pytest
from test_server_a1111 import WEBUIAPI_REQUEST, WEBUIAPI_TXT2IMG
from test_server_support import (  # noqa: F401 (single_thread_torch: autouse)
    client_for,
    decode_png,
    serial_pictures,
    single_thread_torch,
)

from sdgen.errors import SdgenError
from sdgen.server.a1111.styles import merge_prompts, read_styles

STYLES_CSV = (
    "\ufeffname,prompt,negative_prompt\n"  # a BOM, as spreadsheet programs write one
    'cinematic,"{prompt}, film grain, 35mm","blurry, cartoon"\n'
    "bright,vivid colours,\n"
    "bright,very vivid colours,dull\n"  # a later row of a name replaces it, as in A1111
)


@pytest.mark.parametrize(
    "style,prompt,merged",
    [
        ("{prompt}, film grain", "a cat", "a cat, film grain"),
        ("vivid", "a cat", "a cat, vivid"),
        ("vivid", "  ", "vivid"),
        ("", "a cat", "a cat"),
        ("a {prompt} and a {prompt}", "dog", "a dog and a dog"),
    ],
)
def test_styles_merge_as_a1111_merges_them(style, prompt, merged):
    assert merge_prompts(style, prompt) == merged


def test_a_styles_file_is_read_as_a1111_reads_it(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(STYLES_CSV, encoding="utf-8")
    styles = read_styles(path)
    assert list(styles) == ["cinematic", "bright"]
    assert styles["cinematic"].prompt == "{prompt}, film grain, 35mm"
    assert styles["bright"].negative_prompt == "dull"
    (tmp_path / "odd.csv").write_text("title,prompt\nx,y\n")
    with pytest.raises(SdgenError, match="no 'name' column"):
        read_styles(tmp_path / "odd.csv")


def test_a1111_calls_apply_the_styles_they_name(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(STYLES_CSV, encoding="utf-8")
    body = {
        **WEBUIAPI_TXT2IMG,
        "batch_size": 1,
        "negative_prompt": "green",
        "styles": ["cinematic", "bright"],
    }
    with client_for(tmp_path / "data", styles=path) as client:
        listed = client.get("/sdapi/v1/prompt-styles").json()
        assert [s["name"] for s in listed] == ["cinematic", "bright"]
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        prompt = "a red circle, film grain, 35mm, very vivid colours"
        negative = "green, blurry, cartoon, dull"
        assert (info["prompt"], info["negative_prompt"]) == (prompt, negative)
        assert info["styles"] == ["cinematic", "bright"]
        expected = WEBUIAPI_REQUEST.replace(
            prompt=prompt,
            negative_prompt=negative,
            num_images=1,
            emphasis="original",
            long_prompt="chunk",
        )
        picture = decode_png(response.json()["images"][0]).convert("RGB")
        assert picture.tobytes() == serial_pictures(expected)[0].tobytes()
        unknown = client.post("/sdapi/v1/txt2img", json={**body, "styles": ["noir"]})
        assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "styles"
        assert "cinematic, bright" not in unknown.json()["error"]["message"]  # sorted
        assert "bright, cinematic" in unknown.json()["error"]["message"]


def test_styles_apply_to_the_hires_prompts_as_a1111_applies_them(tmp_path):
    from sdgen.server.a1111.protocol import Txt2ImgRequest

    path = tmp_path / "styles.csv"
    path.write_text(STYLES_CSV, encoding="utf-8")
    body = {"prompt": "a cat", "styles": ["cinematic"], "enable_hr": True, "width": 64}
    body |= {"height": 64, "hr_prompt": "a tabby cat"}
    request = Txt2ImgRequest(**body).to_request(None, 1 << 20, styles=read_styles(path))
    assert request.prompt == "a cat, film grain, 35mm"
    assert request.hires.prompt == "a tabby cat, film grain, 35mm"
    assert request.hires.negative_prompt is None  # the first pass's: styled already


def test_without_a_styles_file_a_style_is_refused_saying_how_to_give_some(tmp_path):
    with client_for(tmp_path) as client:
        assert client.get("/sdapi/v1/prompt-styles").json() == []
        response = client.post("/sdapi/v1/txt2img", json={**WEBUIAPI_TXT2IMG, "styles": ["x"]})
        assert response.status_code == 422
        assert "sdgen serve --styles FILE" in response.json()["error"]["message"]
