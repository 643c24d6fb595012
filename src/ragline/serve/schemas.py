"""What each route accepts, and reading a request body into it.

Bodies are JSON objects checked strictly: a string where a number belongs,
a field the route does not know, or a value out of range is a 422 naming
the field (``messages[0].content``); JSON that does not parse is a 400; a
body over the size limit is a 413, and never held in memory past it. Limits
(``k``, ``max_tokens``, question length, list lengths) come from the
server's settings, handed to validation as its context.

``/v1/chat/completions`` takes OpenAI's request fields that ragline can
honour (``n`` only 1) and refuses the others by name rather than ignore them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo

from ragline.engine.index.filters import FilterError, parse_filters
from ragline.serve.errors import ApiError
from ragline.serve.settings import ServeSettings

MAX_STOPS = 4  # as OpenAI's API
MAX_STOP_CHARS = 100
DRAIN_FACTOR = 16


def _settings(info: ValidationInfo) -> ServeSettings:
    return (info.context or {}).get("settings") or ServeSettings()


def _question(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    limit = _settings(info).max_question_chars
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters (got {len(value)})")
    return value


def _at_most(setting: str):
    def check(value, info: ValidationInfo):
        limit = getattr(_settings(info), setting)
        size = len(value) if isinstance(value, list) else value
        if size > limit:
            raise ValueError(f"must be at most {limit} (got {size}); the server's limit")
        return value

    return check


def _listed(value):
    """OpenAI allows one string where a list of strings is meant."""
    return [value] if isinstance(value, str) else value


def _filter_shape(value: Any) -> Any:
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise ValueError(f"must be a filter string or a list of them (got {type(value).__name__})")


def _filter(value: str | list[str]) -> str:
    """A metadata filter, checked for syntax (fields are checked against the
    index before the request is queued); a list must all hold."""
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise ValueError("must not be an empty list")
    try:
        parse_filters(texts)
    except FilterError as error:
        raise ValueError(str(error)) from None
    return texts[0] if len(texts) == 1 else " and ".join(f"({text})" for text in texts)


def _text_parts(value):
    """Message content: a string, or a list of text parts."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


Question = Annotated[str, AfterValidator(_question)]
Filter = Annotated[Any, BeforeValidator(_filter_shape), AfterValidator(_filter)]
K = Annotated[int, Field(ge=1), AfterValidator(_at_most("max_k"))]
MaxTokens = Annotated[int, Field(ge=1), AfterValidator(_at_most("max_tokens"))]
Stops = Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]],
                  BeforeValidator(_listed), Field(max_length=MAX_STOPS)]


class _Strict(BaseModel):
    # NaN and infinity are not settings (JSON parsers accept them as numbers).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Sampling(_Strict):
    """Decoding settings a request may override (absent: the pipeline's own)."""

    max_tokens: MaxTokens | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None  # what torch.manual_seed takes
    stop: Stops | None = None

    def overrides(self) -> dict:
        return {"max_new_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "stop": None if self.stop is None else tuple(self.stop)}


class SearchRequest(_Strict):
    query: Question | None = None
    queries: Annotated[list[Question], Field(min_length=1), AfterValidator(_at_most("max_queries"))] | None = None
    k: K = 10
    pipeline: str | None = None
    filter: Filter | None = None
    # False: a search that a shard of a sharded index did not answer is a 503, not a partial result.
    allow_partial: bool = True

    def texts(self) -> list[str]:
        if (self.query is None) == (self.queries is None):
            raise ApiError(422, "query: give 'query' (one text) or 'queries' (a list), exactly one of them",
                           param="query")
        return [self.query] if self.query is not None else list(self.queries)


class AskRequest(_Sampling):
    question: Question
    pipeline: str | None = None
    filter: Filter | None = None
    stream: bool = False
    allow_partial: bool = True


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[list[TextPart], BeforeValidator(_text_parts)] | None = None
    name: str | None = None

    def text(self) -> str:
        return "".join(part.text for part in self.content or [])


def _asks_something(messages: list[ChatMessage], info: ValidationInfo) -> list[ChatMessage]:
    """The last user message is the question: there must be one, and it must
    be one; a fault in it is named by its place (``messages[2].content``)."""
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise ValueError("has no message with role 'user' (its text is the question)")
    try:
        _question(messages[users[-1]].text(), info)
    except ValueError as error:
        field = f"messages[{users[-1]}].content"
        raise ApiError(422, f"{field}: {error} (the last user message is the question)", param=field) from None
    return messages


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Sampling):
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1), AfterValidator(_at_most("max_messages")),
                        AfterValidator(_asks_something)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: MaxTokens | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    user: str | None = None

    def question(self) -> str:
        return [m for m in self.messages if m.role == "user"][-1].text()

    def overrides(self) -> dict:
        overrides = super().overrides()
        overrides["max_new_tokens"] = self.max_completion_tokens or self.max_tokens
        return overrides


Body = TypeVar("Body", bound=BaseModel)


async def read_request(request: Request, model: type[Body], settings: ServeSettings) -> Body:
    # JSON only: a form or text/plain body is what a web page may POST across
    # origins without asking first, and it must not spend the server's compute.
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(415, f"the body must be JSON sent as Content-Type: application/json "
                            f"(got {media_type or 'no Content-Type'})")
    body = await _read_body(request, settings.max_body_bytes)
    try:
        return model.model_validate_json(body, strict=True, context={"settings": settings})
    except ValidationError as error:
        problem = error.errors(include_url=False)[0]
        if problem["type"] == "json_invalid":
            raise ApiError(400, f"malformed JSON: {problem['msg']}") from None
        field = _field_path(problem["loc"])
        raise ApiError(422, f"{field or 'body'}: {_message(problem)}", param=field) from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 once it passes ``limit``. The rest of an oversized
    body is read and dropped (up to ``DRAIN_FACTOR`` × the limit) so that a
    client still sending it can read the 413; closing on it mid-send would
    reset the connection and lose the answer."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise ApiError(413, f"the body has {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        told = f"{int(declared)} bytes" if declared.isdigit() else "more bytes than that"
        raise ApiError(413, f"the body is over the limit of {limit} bytes ({told})")
    return b"".join(chunks)


def _field_path(loc: tuple) -> str | None:
    """("messages", 0, "content") → "messages[0].content"."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None


def _message(problem: dict) -> str:
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        return "unknown field"
    return message[0].lower() + message[1:] if message else "not a valid value"
