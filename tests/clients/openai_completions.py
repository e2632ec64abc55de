"""OpenAI's own Python client against ortserve's completions API: a whole
completion, a streamed one read piece by piece, and an error raised as the
client's typed exception. Usage: openai_completions.py BASE_URL GOLDEN_JSON"""

import json
import sys

import openai


def main(base_url, golden_path):
    with open(golden_path, encoding="utf-8") as f:
        golden = json.load(f)
    hello = next(c for c in golden["cases"] if c["prompt"] == "Hello")
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)

    completion = client.completions.create(model="tiny_lm", prompt="Hello", max_tokens=64)
    assert completion.choices[0].text == hello["text"], completion
    assert completion.choices[0].finish_reason == "stop", completion
    assert completion.usage.completion_tokens == len(hello["tokens"]), completion.usage
    print("openai completions: ok")

    stream = client.completions.create(model="tiny_lm", prompt="Hello", max_tokens=64, stream=True)
    pieces, reasons = [], []
    for chunk in stream:
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert pieces[:-1] == golden["pieces"], pieces
    assert reasons[-1] == "stop" and set(reasons[:-1]) == {None}, reasons
    print("openai streamed completions: ok")

    try:
        client.completions.create(model="tiny_lm", prompt="Hello", max_tokens=500)
    except openai.BadRequestError as error:
        assert "model's context of 96 tokens" in error.message, error.message
    else:
        raise AssertionError("a request over the context was accepted")
    try:
        client.completions.create(model="missing", prompt="Hello")
    except openai.NotFoundError as error:
        assert "Model not found: missing" in error.message, error.message
    else:
        raise AssertionError("an unknown model was accepted")
    print("openai errors: ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
