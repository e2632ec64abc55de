"""Tiny decoder-only "language models" for the text_generation handler tests.

Each model is an ONNX graph in Hugging Face Optimum's decoder export signature
(input_ids, attention_mask, [position_ids], past_key_values.N.key/value ->
logits, present.N.key/value) with a real, growing KV cache, next to a
byte-level BPE tokenizer.json built with the `tokenizers` package. The graph
replays a fixed script, so greedy decoding yields exactly known text; see
README.md in this directory for the rule.

write(out_dir) builds every model, checks each against a pure-Python rule by
decoding with onnx.reference.ReferenceEvaluator the way a server would (and
tiny_lm_slow, a deliberately slow copy of tiny_lm, against tiny_lm's outputs),
and writes the model directories and golden/tiny_lm.json.
"""

import json
import os

import numpy as np
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

# generate.py imports this module inside main(), so this import is not circular.
from generate import build, init, node, pass_through, slow_loop_nodes, tensor

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
LAYERS, HEADS, HEAD_DIM = 2, 2, 4
MAX_LENGTH = 96
# Layer N's value entries hold token_id + LAYER_OFFSET * N, so the layers'
# caches differ and a server that swaps or drops one gets other text.
LAYER_OFFSET = 1000
# Weight of the layer-consistency term (see next_token_index): any nonzero
# value works; 7 makes a mismatch move far along the script.
MISMATCH_WEIGHT = 7
ONEHOT_LOGIT = 8.0
EOS_TEXT = "<|endoftext|>"
# Characters of 1, 2, 3 and 4 UTF-8 bytes, so streaming must hold back
# partial characters (€, ✓ and 🙂 stay several byte tokens each).
SCRIPT = "Hello, wörld! 1 € = 100 cents. Ünïcödé ✓ 🙂\n"
MODEL_CONFIG = "ortserve:\n  handler: text_generation\n"
GOLDEN_PROMPTS = ["Hello", "a", "Hi there", "é"]
# tiny_lm_slow runs this many iterations of generate.py's slow_loop body
# (v = tanh(v @ v), v f32[256,256]) on every call, whatever the inputs:
# about 100 ms per call on one core (see README.md): a "Hello" generation (36
# calls) then outlasts a responseTimeout of 1 s with a wide margin.
SLOW_TRIPS = 300


# ---------------------------------------------------------------- tokenizer

def bytes_to_unicode():
    """GPT-2's byte -> printable character table used by the ByteLevel pieces."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


BYTE_CHARS = bytes_to_unicode()


def byte_level(text):
    return "".join(BYTE_CHARS[b] for b in text.encode("utf-8"))


# In rank order. Each merged token must be built from earlier vocabulary
# entries; together they make "Hello", " wör", " 100", "é", "ö" single tokens.
MERGES = [("H", "e"), ("l", "l"), ("He", "ll"), ("Hell", "o"),
          ("Ġ", "w"), tuple(byte_level("ö")), ("Ġw", byte_level("ö")),
          (byte_level(" wö"), "r"), ("l", "d"),
          ("Ġ", "c"), ("e", "n"), ("Ġc", "en"), ("t", "s"),
          ("Ġ", "1"), ("0", "0"), ("Ġ1", "00"), tuple(byte_level("é"))]


def vocabulary():
    """Ids 0..255 are the byte characters in byte order (id == byte value),
    then the merges in rank order, then EOS as the last id."""
    assert set(BYTE_CHARS.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    vocab = {BYTE_CHARS[b]: b for b in range(256)}
    for left, right in MERGES:
        assert left in vocab and right in vocab, (left, right)
        vocab[left + right] = len(vocab)
    vocab[EOS_TEXT] = len(vocab)
    return vocab


def make_tokenizer():
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary(), merges=MERGES))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    # Already in the vocabulary (last id): this only marks it special, so
    # decode() skips it and tokenizer.json lists it under added_tokens.
    tokenizer.add_special_tokens([AddedToken(EOS_TEXT, special=True)])
    return tokenizer


class Script:
    """The token sequence S the model replays: the script's tokens, then EOS."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos = tokenizer.token_to_id(EOS_TEXT)
        assert self.eos == self.vocab_size - 1
        ids = tokenizer.encode(SCRIPT).ids
        assert tokenizer.decode(ids) == SCRIPT, "the tokenizer must round-trip the script"
        self.tokens = ids + [self.eos]

    def continuation(self, prompt_ids):
        """The pure-Python rule: greedy continuation ids, EOS excluded."""
        seq = list(prompt_ids)
        while len(seq) < MAX_LENGTH:
            n, first = len(seq), seq[0]  # n: tokens seen, including the last one
            token = self.tokens[(n + first) % len(self.tokens)]
            if token == self.eos:
                return seq[len(prompt_ids):]
            seq.append(token)
        raise AssertionError(f"no EOS within {MAX_LENGTH} tokens")


def noise(vocab_size, eos):
    """A fixed pattern in [0, 3.75]: far below ONEHOT_LOGIT, so greedy always
    picks the script token, yet sampling at temperature 1 often picks others.
    Zero at EOS so sampling seldom stops early."""
    pattern = np.array([(j * 37) % 16 / 4.0 for j in range(vocab_size)], np.float32)
    pattern[eos] = 0.0
    return pattern


# ---------------------------------------------------------------- graph

def past_name(layer, kind):
    return f"past_key_values.{layer}.{kind}"


def present_name(layer, kind):
    return f"present.{layer}.{kind}"


def cache_type(name, length_dim):
    return tensor(name, F32, ["batch_size", HEADS, length_dim, HEAD_DIM])


def position_from_mask():
    """pos[b, i] = sum(attention_mask[b]) - sequence_length + i (merged export)."""
    return [
        node("ReduceSum", ["attention_mask", "axis_1"], ["total_len"], keepdims=1),  # [B,1]
        node("Shape", ["input_ids"], ["seq_len_1d"], start=1, end=2),               # [1]
        node("Squeeze", ["seq_len_1d"], ["seq_len"]),
        node("Range", ["zero_i", "seq_len", "one_i"], ["offsets"]),                # [s]
        node("Sub", ["total_len", "seq_len_1d"], ["past_len"]),                    # [B,1]
        node("Add", ["past_len", "offsets"], ["pos"]),                             # [B,s]
    ]


def cache_entries(source, out):
    """[B,s] int64 -> [B,HEADS,s,HEAD_DIM] float32, the value broadcast over heads and dims."""
    return [node("Cast", [source], [out + "_f"], to=F32),
            node("Unsqueeze", [out + "_f", "axes_1_3"], [out + "_4d"]),           # [B,1,s,1]
            node("Mul", [out + "_4d", "cache_ones"], [out])]


def past_source(layer, kind, merged):
    """The past actually used: in the merged export, none when use_cache_branch is false."""
    if not merged:
        return [], past_name(layer, kind)
    used = f"past_used.{layer}.{kind}"
    return [node("Slice", [past_name(layer, kind), "zero_1d", "past_end", "axis_2"], [used])], used


def layer_cache(layer, merged):
    """present = Concat(past, new) along the sequence axis, for keys and values."""
    nodes = [node("Add", ["new_value", f"layer_offset_{layer}"], [f"new_value_{layer}"])]
    for kind, new in [("key", "new_key"), ("value", f"new_value_{layer}")]:
        past_nodes, past = past_source(layer, kind, merged)
        nodes += past_nodes + [node("Concat", [past, new], [present_name(layer, kind)], axis=2)]
    return nodes


def first_token(layer):
    """Layer `layer`'s cached value at absolute position 0, minus its layer offset: [B,1]."""
    out = f"first_{layer}"
    return [node("Slice", [present_name(layer, "value"), "zero_3", "one_3", "axes_1_2_3"],
                 [out + "_4d"]),                                                   # [B,1,1,1]
            node("Reshape", [out + "_4d", "batch_by_1"], [out + "_raw"]),
            node("Sub", [out + "_raw", f"layer_offset_{layer}"], [out])]


def next_token_index():
    """index = n + first_0 + MISMATCH_WEIGHT * (first_1 - first_0), n = pos + 1.

    With a correct cache first_0 == first_1 == the sequence's first token, so
    this is n + first. All values are small integers, exact in float32."""
    return [node("Cast", ["pos"], ["pos_f"], to=F32),
            node("Add", ["pos_f", "one_f"], ["n_f"]),
            node("Sub", ["first_1", "first_0"], ["mismatch"]),
            node("Mul", ["mismatch", "mismatch_weight"], ["mismatch_term"]),
            node("Add", ["n_f", "first_0"], ["index_clean"]),
            node("Add", ["index_clean", "mismatch_term"], ["index_f"]),
            node("Cast", ["index_f"], ["index_raw"], to=I64),
            node("Mod", ["index_raw", "script_len"], ["index"])]  # fmod=0: never negative


def logits_from(next_ids, out="logits"):
    return [node("Unsqueeze", [next_ids, "axis_2"], ["next_3d"]),                 # [B,s,1]
            node("Equal", ["next_3d", "vocab_ids"], ["onehot_b"]),                 # [B,s,V]
            node("Cast", ["onehot_b"], ["onehot"], to=F32),
            node("Mul", ["onehot", "onehot_logit"], ["peak"]),
            node("Add", ["peak", "noise"], [out])]


def slow_logits(fast):
    """logits = fast + 0 * sum(v) after SLOW_TRIPS slow_loop iterations: the
    same numbers, but every call pays for the loop (nothing can prune it)."""
    return slow_loop_nodes("slow_trips") + pass_through(fast, "v_final", "logits")


def constants(script):
    vocab_size = script.vocab_size
    return [
        init("axis_1", np.array([1], np.int64)),
        init("axis_2", np.array([2], np.int64)),
        init("axes_1_3", np.array([1, 3], np.int64)),
        init("axes_1_2_3", np.array([1, 2, 3], np.int64)),
        init("zero_i", np.int64(0)),
        init("one_i", np.int64(1)),
        init("zero_1d", np.array([0], np.int64)),
        init("zero_3", np.zeros(3, np.int64)),
        init("one_3", np.ones(3, np.int64)),
        init("batch_by_1", np.array([-1, 1], np.int64)),
        init("past_end_if_cache", np.array([np.iinfo(np.int64).max], np.int64)),
        init("cache_ones", np.ones((1, HEADS, 1, HEAD_DIM), np.float32)),
        *[init(f"layer_offset_{n}", np.float32(LAYER_OFFSET * n)) for n in range(LAYERS)],
        init("one_f", np.float32(1)),
        init("mismatch_weight", np.float32(MISMATCH_WEIGHT)),
        init("script_len", np.int64(len(script.tokens))),
        init("script_tokens", np.array(script.tokens, np.int64)),
        init("vocab_ids", np.arange(vocab_size, dtype=np.int64)),
        init("onehot_logit", np.float32(ONEHOT_LOGIT)),
        init("noise", noise(vocab_size, script.eos)),
        init("slow_trips", np.int64(SLOW_TRIPS)),
    ]


def graph_inputs(merged):
    inputs = [tensor("input_ids", I64, ["batch_size", "sequence_length"]),
              tensor("attention_mask", I64, ["batch_size", "total_sequence_length"])]
    if not merged:
        inputs.append(tensor("position_ids", I64, ["batch_size", "sequence_length"]))
    for layer in range(LAYERS):
        inputs += [cache_type(past_name(layer, kind), "past_sequence_length")
                   for kind in ("key", "value")]
    if merged:
        inputs.append(tensor("use_cache_branch", BOOL, [1]))
    return inputs


def graph_outputs(vocab_size, with_present):
    outputs = [tensor("logits", F32, ["batch_size", "sequence_length", vocab_size])]
    if with_present:
        for layer in range(LAYERS):
            outputs += [cache_type(present_name(layer, kind), "total_sequence_length")
                        for kind in ("key", "value")]
    return outputs


def tiny_lm_graph(name, script, merged=False, with_present=True, slow=False):
    if merged:
        nodes = [node("Where", ["use_cache_branch", "past_end_if_cache", "zero_1d"], ["past_end"]),
                 *position_from_mask()]
    else:
        nodes = [node("Identity", ["position_ids"], ["pos"])]
    nodes += cache_entries("input_ids", "new_value") + cache_entries("pos", "new_key")
    for layer in range(LAYERS):
        nodes += layer_cache(layer, merged)
    nodes += first_token(0) + first_token(1) + next_token_index()
    nodes += [node("Gather", ["script_tokens", "index"], ["next_ids"])]
    if slow:
        nodes += logits_from("next_ids", "logits_fast") + slow_logits("logits_fast")
    else:
        nodes += logits_from("next_ids")
    # Only the constants this variant reads: ORT warns about unused initializers.
    used = {name for n in nodes for name in n.input}
    inits = [c for c in constants(script) if c.name in used]
    return build(name, nodes, graph_inputs(merged),
                 graph_outputs(script.vocab_size, with_present), inits)


# ---------------------------------------------------------------- verification

def empty_past(length=0):
    return np.zeros((1, HEADS, length, HEAD_DIM), np.float32)


def feeds(new_ids, past, total_len, merged, use_cache):
    start = total_len - len(new_ids)
    feed = {"input_ids": np.array([new_ids], np.int64),
            "attention_mask": np.ones((1, total_len), np.int64)}
    if merged:
        feed["use_cache_branch"] = np.array([use_cache])
    else:
        feed["position_ids"] = np.arange(start, total_len, dtype=np.int64)[None]
    for layer in range(LAYERS):
        for kind in ("key", "value"):
            feed[past_name(layer, kind)] = past[(layer, kind)]
    return feed


def run(session, feed):
    names = ["logits"] + [present_name(n, k) for n in range(LAYERS) for k in ("key", "value")]
    values = session.run(None, feed)
    return dict(zip(names, values))


def decode_with_cache(session, script, prompt_ids, merged):
    """Greedy decoding as a server does it: the whole prompt with an empty
    past, then one token per call feeding each present back as the past."""
    past = {(n, k): empty_past() for n in range(LAYERS) for k in ("key", "value")}
    seq, new_ids, generated = list(prompt_ids), list(prompt_ids), []
    while len(seq) < MAX_LENGTH:
        out = run(session, feeds(new_ids, past, len(seq), merged, use_cache=bool(generated)))
        assert out["logits"].shape == (1, len(new_ids), script.vocab_size)
        past = {(n, k): out[present_name(n, k)] for n in range(LAYERS) for k in ("key", "value")}
        assert past[(0, "key")].shape == (1, HEADS, len(seq), HEAD_DIM), "the cache must grow"
        token = int(np.argmax(out["logits"][0, -1]))
        if token == script.eos:
            return generated
        generated.append(token)
        seq.append(token)
        new_ids = [token]
    raise AssertionError(f"no EOS within {MAX_LENGTH} tokens")


def check_cache_matters(session, script, prompt_ids):
    """Dropping the cache (an empty past at the right position) must change the
    first generated step's answer: the graph really reads the past."""
    empty = {(n, k): empty_past() for n in range(LAYERS) for k in ("key", "value")}
    out = run(session, feeds(prompt_ids, empty, len(prompt_ids), False, False))
    past = {key: out[present_name(*key)] for key in empty}
    seq = prompt_ids + script.continuation(prompt_ids)[:1]
    with_cache = run(session, feeds(seq[-1:], past, len(seq), False, True))
    without = run(session, feeds(seq[-1:], empty, len(seq), False, True))
    assert np.argmax(with_cache["logits"][0, -1]) != np.argmax(without["logits"][0, -1])


def check_merged_ignores_past(session, script, prompt_ids):
    """With use_cache_branch false the past is ignored, whatever its length
    (Optimum feeds a dummy past there)."""
    junk = {(n, k): np.full((1, HEADS, 3, HEAD_DIM), 5.0, np.float32)
            for n in range(LAYERS) for k in ("key", "value")}
    out = run(session, feeds(prompt_ids, junk, len(prompt_ids), True, False))
    expected = script.tokens[(len(prompt_ids) + prompt_ids[0]) % len(script.tokens)]
    assert int(np.argmax(out["logits"][0, -1])) == expected
    assert out[present_name(0, "value")].shape[2] == len(prompt_ids)


def check_batch_rows(session, script):
    """Rows of a batch are independent: two prompts of the same length at once."""
    rows = [[script.tokens[0], 1, 2], [97, 98, 99]]
    past = {(n, k): np.zeros((2, HEADS, 0, HEAD_DIM), np.float32)
            for n in range(LAYERS) for k in ("key", "value")}
    feed = feeds(rows[0], past, 3, False, False)
    feed["input_ids"] = np.array(rows, np.int64)
    feed["attention_mask"] = np.ones((2, 3), np.int64)
    feed["position_ids"] = np.tile(np.arange(3, dtype=np.int64), (2, 1))
    got = np.argmax(run(session, feed)["logits"][:, -1], axis=-1).tolist()
    assert got == [script.tokens[(3 + row[0]) % len(script.tokens)] for row in rows], got


def verify(models_by_name, script):
    tokenizer = script.tokenizer
    plain = ReferenceEvaluator(models_by_name["tiny_lm"])
    merged = ReferenceEvaluator(models_by_name["tiny_lm_merged"])
    for prompt in GOLDEN_PROMPTS + [SCRIPT[:12]]:
        prompt_ids = tokenizer.encode(prompt).ids
        expected = script.continuation(prompt_ids)
        got = decode_with_cache(plain, script, prompt_ids, merged=False)
        assert got == expected, ("tiny_lm", prompt, got, expected)
        got = decode_with_cache(merged, script, prompt_ids, merged=True)
        assert got == expected, ("tiny_lm_merged", prompt, got, expected)
        check_cache_matters(plain, script, prompt_ids)
        check_merged_ignores_past(merged, script, prompt_ids)
    check_batch_rows(plain, script)
    no_present = ReferenceEvaluator(models_by_name["tiny_lm_no_present"])
    assert len(no_present.output_names) == 1
    check_slow_matches(plain, models_by_name["tiny_lm_slow"], script)


def check_slow_matches(plain, slow_model, script):
    """tiny_lm_slow gives tiny_lm's outputs bit for bit, on the prompt step and
    on one cached step. Not a whole decode: onnx.reference's Loop runs no
    iterations when the condition input is omitted (it reads the missing
    condition as false), and once that is fixed each call would cost
    SLOW_TRIPS NumPy 256x256 matmuls. ONNX Runtime does run the loop."""
    loops = [n for n in slow_model.graph.node if n.op_type == "Loop"]
    assert [list(n.input) for n in loops] == [["slow_trips", "", "v0"]]
    trips = [t for t in slow_model.graph.initializer if t.name == "slow_trips"]
    assert [numpy_helper.to_array(t) for t in trips] == [SLOW_TRIPS]
    slow = ReferenceEvaluator(slow_model)
    empty = {(n, k): empty_past() for n in range(LAYERS) for k in ("key", "value")}
    for prompt in GOLDEN_PROMPTS:
        prompt_ids = script.tokenizer.encode(prompt).ids
        seq = prompt_ids + script.continuation(prompt_ids)[:1]
        first = feeds(prompt_ids, empty, len(prompt_ids), False, False)
        want, got = run(plain, first), run(slow, first)
        past = {key: want[present_name(*key)] for key in empty}
        second = feeds(seq[-1:], past, len(seq), False, True)
        for want, got in [(want, got), (run(plain, second), run(slow, second))]:
            assert want.keys() == got.keys()
            assert all(np.array_equal(want[k], got[k]) for k in want), prompt


# ---------------------------------------------------------------- golden

def stream_pieces(tokenizer, tokens):
    """What a correct streamer emits: the newly completed text whenever the
    decoded text grows and does not end in a partial character (U+FFFD)."""
    pieces, sent = [], ""
    for count in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:count])
        if len(text) > len(sent) and not text.endswith("\ufffd"):
            pieces.append(text[len(sent):])
            sent = text
    assert sent == tokenizer.decode(tokens)
    return pieces


def golden(script):
    tokenizer = script.tokenizer
    cases = []
    for prompt in GOLDEN_PROMPTS:
        prompt_ids = tokenizer.encode(prompt).ids
        tokens = script.continuation(prompt_ids)
        text = tokenizer.decode(tokens)
        assert tokens and "\ufffd" not in text, (prompt, text)
        cases.append({"prompt": prompt, "prompt_tokens": prompt_ids, "tokens": tokens,
                      "text": text, "finish_reason": "eos"})
    hello = cases[GOLDEN_PROMPTS.index("Hello")]
    return {"vocab_size": script.vocab_size, "eos_token_id": script.eos,
            "script": SCRIPT, "script_tokens": script.tokens,
            "cases": cases, "pieces": stream_pieces(tokenizer, hello["tokens"])}


# ---------------------------------------------------------------- output

def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)
        f.write("\n")


def write_model_dir(path, model, script):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    script.tokenizer.save(os.path.join(path, "tokenizer.json"))
    write_json(os.path.join(path, "generation_config.json"),
               {"eos_token_id": script.eos, "max_length": MAX_LENGTH,
                "pad_token_id": script.eos})
    write_json(os.path.join(path, "config.json"),
               {"model_type": "tiny_lm", "max_position_embeddings": MAX_LENGTH,
                "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                "num_key_value_heads": HEADS, "hidden_size": HEADS * HEAD_DIM,
                "vocab_size": script.vocab_size})
    with open(os.path.join(path, "model-config.yaml"), "w") as f:
        f.write(MODEL_CONFIG)


def write(out_dir):
    """Writes OUT_DIR/<name>/ for each model and OUT_DIR/golden/tiny_lm.json;
    returns the number of model directories written."""
    script = Script(make_tokenizer())
    built = {"tiny_lm": tiny_lm_graph("tiny_lm", script),
             "tiny_lm_merged": tiny_lm_graph("tiny_lm_merged", script, merged=True),
             # Negative test: no present.* outputs, so no cache to feed back.
             "tiny_lm_no_present": tiny_lm_graph("tiny_lm_no_present", script,
                                                 with_present=False),
             # tiny_lm plus SLOW_TRIPS slow_loop iterations on every call.
             "tiny_lm_slow": tiny_lm_graph("tiny_lm_slow", script, slow=True)}
    verify(built, script)
    for name, model in built.items():
        write_model_dir(os.path.join(out_dir, name), model, script)
    os.makedirs(os.path.join(out_dir, "golden"), exist_ok=True)
    write_json(os.path.join(out_dir, "golden", "tiny_lm.json"), golden(script))
    return len(built)
