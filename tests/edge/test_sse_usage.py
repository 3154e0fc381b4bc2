"""SSEUsage (edge/metering.py): what is forwarded, what usage is found, and the text fallback."""

import orjson
import pytest

from edge.metering import SSEUsage


def event(obj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def delta(text: str, **extra) -> bytes:
    return event(
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}], **extra}
    )


USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}
USAGE_ONLY = event({"object": "chat.completion.chunk", "choices": [], "usage": USAGE})
DONE = b"data: [DONE]\n\n"


def run(chunks, *, drop_usage_chunk) -> tuple[bytes, SSEUsage]:
    sse = SSEUsage(drop_usage_chunk=drop_usage_chunk)
    out = b"".join(sse.feed(chunk) for chunk in chunks) + sse.flush()
    return out, sse


def test_usage_only_chunk_is_read_and_dropped_when_the_client_did_not_ask():
    chunks = [delta("a"), delta(" b", usage=None), USAGE_ONLY, DONE]
    out, sse = run(chunks, drop_usage_chunk=True)
    assert out == delta("a") + delta(" b") + DONE
    assert sse.usage == (11, 3, 4)


def test_usage_only_chunk_is_forwarded_when_the_client_asked():
    chunks = [delta("a"), USAGE_ONLY, DONE]
    out, sse = run(chunks, drop_usage_chunk=False)
    assert out == b"".join(chunks)
    assert sse.usage == (11, 3, 4)


def last_chunk(**extra) -> dict:
    """A last content chunk as servers send it, usage between its choices and a later field."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": " end"}, "finish_reason": "stop"}],
        **extra,
        "system_fingerprint": "fp_é",
    }


def test_usage_on_a_chunk_that_still_has_choices_is_read_and_stripped_when_the_client_did_not_ask():
    spaced = b'data:  {"choices": [{"index": 0, "delta": {"content": "a"}}], "usage": null}\n\n'
    sse = SSEUsage(drop_usage_chunk=True)
    out = sse.feed(spaced + event(last_chunk(usage=USAGE)) + DONE)
    # Both lose their usage (null or not) and keep their other fields, in their order.
    assert out == event({"choices": [{"index": 0, "delta": {"content": "a"}}]}) + event(last_chunk())
    assert sse.flush() == DONE  # still held back until the edge has recorded the request
    assert list(orjson.loads(out.split(b"\n\n")[1].removeprefix(b"data: "))) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "system_fingerprint",
    ]
    assert sse.usage == (11, 3, 4)


def test_usage_on_a_chunk_that_still_has_choices_is_forwarded_untouched_when_the_client_asked():
    chunks = [
        delta("a"),
        b'data: {"choices":[{"index":0,"delta":{}}], "usage" : ' + orjson.dumps(USAGE) + b"}\n\n",
    ]
    out, sse = run([*chunks, DONE], drop_usage_chunk=False)
    assert out == b"".join(chunks) + DONE
    assert sse.usage == (11, 3, 4)


def test_a_stripped_event_keeps_its_other_lines_and_becomes_one_data_line():
    body = orjson.dumps(last_chunk(usage=USAGE))
    middle = body.index(b',"choices"') + 1  # a data line may end anywhere between JSON tokens
    multi = b"id: 7\n: note\ndata: " + body[:middle] + b"\ndata: " + body[middle:] + b"\nevent: x\n\n"
    out, sse = run([multi, DONE], drop_usage_chunk=True)
    assert out == b"id: 7\n: note\n" + event(last_chunk()).removesuffix(b"\n\n") + b"\nevent: x\n\n" + DONE
    assert sse.usage == (11, 3, 4)


def test_a_stream_with_usage_on_its_last_content_chunk_is_the_same_split_at_any_byte():
    stream = delta("one") + delta(" two", usage=None) + event(last_chunk(usage=USAGE)) + DONE
    expected = delta("one") + delta(" two") + event(last_chunk()) + DONE
    for cut in range(len(stream) + 1):
        sse = SSEUsage(drop_usage_chunk=True)
        outputs = [sse.feed(stream[:cut]), sse.feed(stream[cut:])]
        assert all(out == b"" or out.endswith(b"\n\n") for out in outputs)
        assert b"".join(outputs) + sse.flush() == expected, cut
        assert sse.usage == (11, 3, 4)
    sse = SSEUsage(drop_usage_chunk=True)
    one_by_one = b"".join(sse.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert one_by_one + sse.flush() == expected


@pytest.mark.parametrize("size", [1, 7, 64])
def test_events_split_across_chunks_anywhere_are_forwarded_whole_and_in_order(size):
    stream = delta("one") + delta(" two") + USAGE_ONLY + DONE
    pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
    sse = SSEUsage(drop_usage_chunk=True)
    outputs = [sse.feed(piece) for piece in pieces]
    assert all(out == b"" or out.endswith(b"\n\n") for out in outputs)  # never half an event
    assert b"".join(outputs) + sse.flush() == delta("one") + delta(" two") + DONE
    assert sse.usage == (11, 3, 4)


def test_without_usage_the_text_is_read_from_the_kept_events():
    out, sse = run([delta("Hello"), delta(" world"), DONE], drop_usage_chunk=True)
    assert sse.usage is None
    assert sse.text() == "Hello world"
    assert out == delta("Hello") + delta(" world") + DONE


def test_completion_chunks_give_their_text_too():
    chunk = event({"object": "text_completion", "choices": [{"index": 0, "text": "abc"}]})
    _, sse = run([chunk, chunk], drop_usage_chunk=False)
    assert sse.text() == "abcabc"


def test_null_usage_on_every_chunk_is_not_usage_and_is_stripped_when_the_client_did_not_ask():
    out, sse = run([delta("x", usage=None), delta("y", usage=None)], drop_usage_chunk=True)
    assert out == delta("x") + delta("y")
    assert sse.usage is None
    assert sse.text() == "xy"


def test_null_usage_first_or_split_across_data_lines_is_stripped_too():
    first = b'data: {"usage":null,"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    split = b'data: {"choices":[{"index":0,"delta":{"content":"b"}}]\ndata: ,"usage":null}\n\n'
    out, _ = run([first, split], drop_usage_chunk=True)
    assert out == (
        event({"choices": [{"index": 0, "delta": {"content": "a"}}]})
        + b'data: {"choices":[{"index":0,"delta":{"content":"b"}}]\ndata: }\n\n'  # still one JSON
    )


def test_null_usage_written_inside_the_text_is_text():
    chunk = delta(',"usage":null and "usage": null')
    out, sse = run([chunk], drop_usage_chunk=True)
    assert out == chunk
    assert sse.text() == ',"usage":null and "usage": null'


def test_null_usage_on_every_chunk_is_forwarded_untouched_when_the_client_asked():
    chunks = [delta("x", usage=None), b'data: {"choices": [], "usage" : null}\n\n', USAGE_ONLY, DONE]
    out, sse = run(chunks, drop_usage_chunk=False)
    assert out == b"".join(chunks)
    assert sse.usage == (11, 3, 4)


def test_a_long_stream_without_usage_keeps_its_text_within_bounds():
    chunk = delta("word ")
    sse = SSEUsage(drop_usage_chunk=True)
    count = (1 << 20) // len(chunk) * 3
    for _ in range(count):
        sse.feed(chunk)
    assert sse._kept_bytes <= 1 << 20  # folded into text as it goes
    assert sse.text() == "word " * count


def test_a_torn_final_event_is_passed_on_at_flush():
    sse = SSEUsage(drop_usage_chunk=True)
    assert sse.feed(delta("a") + b'data: {"tor') == delta("a")
    assert sse.flush() == b'data: {"tor'
    assert sse.text() == "a"


@pytest.mark.parametrize("done", [DONE, b"data:[DONE]\n\n"])
def test_the_end_of_the_stream_is_held_back_until_flush(done):
    """A client that has [DONE] considers the answer whole: it leaves only after the edge has
    recorded the request (the proxy journals the event between the last feed and flush)."""
    sse = SSEUsage(drop_usage_chunk=True)
    forwarded = sse.feed(delta("a") + USAGE_ONLY + done)
    assert forwarded == delta("a")
    assert sse.usage == (11, 3, 4)
    assert sse.flush() == done


def test_a_done_inside_the_text_is_not_held_back():
    text = delta("the literal [DONE]\n\n")
    sse = SSEUsage(drop_usage_chunk=True)
    assert sse.feed(text) == text
    assert sse.flush() == b""
