"""Messages a user reads: each names the real field and says the real
problem (the hostile pass's item 9)."""

from __future__ import annotations

import pytest

from ragline.engine.atomic import check_replaceable
from ragline.engine.errors import InputError
from ragline.engine.index.build import _settings
from ragline.engine.scale.ray_session import check_address
from ragline.retrievers.dense import DenseIndexBuilder
from ragline.serve.errors import ApiError
from ragline.serve.schemas import AskRequest, ChatRequest, SearchRequest, read_request
from ragline.serve.settings import ServeSettings


class FakeRequest:
    def __init__(self, body: bytes):
        self.headers = {"content-type": "application/json", "content-length": str(len(body))}
        self._body = body

    async def stream(self):
        yield self._body


def problem(model, body: bytes) -> tuple[int, str | None, str]:
    import asyncio

    with pytest.raises(ApiError) as caught:
        asyncio.run(read_request(FakeRequest(body), model, ServeSettings()))
    return caught.value.status, caught.value.param, caught.value.message


def test_a_null_message_content_is_named_by_its_place():
    status, param, message = problem(ChatRequest, b'{"model": "qa", "messages": [{"role": "system", "content": "x"},'
                                                   b' {"role": "user", "content": null}]}')
    assert (status, param) == (422, "messages[1].content") and message.startswith("messages[1].content: must not be empty")


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_temperature_that_is_not_a_number_says_so(value):
    status, param, message = problem(AskRequest, b'{"question": "q", "temperature": ' + value + b"}")
    assert (status, param) == (422, "temperature") and "finite number" in message


@pytest.mark.parametrize("value", [b"5", b"[1]", b"{}", b'["a=1", 3]'])
def test_a_filter_of_the_wrong_shape_is_named_filter(value):
    status, param, message = problem(SearchRequest, b'{"query": "q", "filter": ' + value + b"}")
    assert (status, param) == (422, "filter") and "must be a filter string or a list of them" in message


def test_a_folder_that_is_not_an_index_says_an_index(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="is not an index ragline wrote"):
        check_replaceable(tmp_path / "mine", "index")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="refusing to replace it with an index"):
        check_replaceable(tmp_path / "file", "index")


@pytest.mark.parametrize("address", ["localhost:99999", "127.0.0.1:0"])
def test_a_ray_port_out_of_range_is_named_as_such(address):
    with pytest.raises(InputError, match=r"is not a port \(1 to 65535\)"):
        check_address(address)


def test_one_encoder_spelt_three_ways_is_one_build_setting():
    # A build started from Python with one spelling resumes from the command line with another.
    spellings = ["default", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"]
    settings = [_settings(DenseIndexBuilder, {"encoder": name}) for name in spellings]
    assert settings[0] == settings[1] == settings[2]
    assert settings[0]["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_generating_from_a_cache_raises_no_deprecation_warning(tiny_lm):
    # Every `ragline ask` with KV reuse printed transformers' FutureWarning about `past_key_values`.
    import warnings

    from tiny_causal_lms import passages, query

    from ragline.engine.pipeline import Pipeline
    from ragline.generators.generate import Generate

    for mode in ("block", "blend"):
        stage = Generate(model=tiny_lm, passages=3, max_new_tokens=3, options={"device": "cpu"}, kv_reuse=mode)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            assert Pipeline([stage]).run([query(passages())])[0].answer is not None
