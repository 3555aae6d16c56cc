"""Run docs/walkthrough.md without pasting: its Python blocks in order, in one namespace, each block's output
under its section's title, as the document shows it. The test suite runs the blocks through the same functions,
so the document and this runner cannot drift apart.

    python -m minroberta.walkthrough                 # every block (needs pip install -e '.[learn]')
    python -m minroberta.walkthrough --code          # each block's code too, before what it prints
"""

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "walkthrough.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
HEADING = re.compile(r"^#{2,3} (.+)$", re.M)


class Block:
    """One ```python block: its code, the line of the document it starts on, the section it sits in, and the
    ```text block right after it (what it prints), with that block's span in the document."""

    def __init__(self, code, line, section, expected=None, expected_span=None):
        self.code, self.line, self.section = code, line, section
        self.expected, self.expected_span = expected, expected_span


def python_blocks(text):
    """The document's ```python blocks in order; a ```text block that follows one with nothing but blank
    lines between is its expected output."""
    fences = list(FENCE.finditer(text))
    blocks = []
    for n, fence in enumerate(fences):
        if fence.group(1) != "python":
            continue
        headings = HEADING.findall(text, 0, fence.start())
        line = text.count("\n", 0, fence.start(2)) + 1
        after = fences[n + 1] if n + 1 < len(fences) else None
        if after is not None and after.group(1) == "text" and not text[fence.end():after.start()].strip():
            blocks.append(Block(fence.group(2), line, headings[-1] if headings else "", after.group(2), after.span(2)))
        else:
            blocks.append(Block(fence.group(2), line, headings[-1] if headings else ""))
    return blocks


def run_blocks(blocks, path=DOC):
    """Yield what each block prints, running them one after another in one namespace. Each block is compiled
    at its own lines of `path`, so a traceback points into the document."""
    namespace = {"__name__": "walkthrough"}
    for block in blocks:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile("\n" * (block.line - 1) + block.code, path, "exec"), namespace)
        yield printed.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minroberta.walkthrough", description=__doc__.split("\n\n")[0])
    parser.add_argument("document", nargs="?", default=DOC, help="the walkthrough (default: docs/walkthrough.md "
                                                                  "of this checkout)")
    parser.add_argument("--code", action="store_true", help="print each block's code before what it prints")
    args = parser.parse_args(argv)
    try:
        with open(args.document, encoding="utf-8") as handle:
            blocks = python_blocks(handle.read())
    except OSError as exc:
        print(f"error: {args.document}: cannot read ({exc.strerror}); give the path of docs/walkthrough.md "
              "(it is in the source checkout, not in an installed wheel)", file=sys.stderr)
        return 2
    section = None
    with tempfile.TemporaryDirectory(prefix="walkthrough-") as scratch:
        tempfile.tempdir = scratch   # the folders the blocks make are removed at the end
        try:
            outputs = run_blocks(blocks, args.document)
            for block in blocks:
                if block.section != section:
                    section = block.section
                    print(f"\n== {section}", flush=True)
                if args.code:
                    print("".join(f">>> {line}\n" for line in block.code.splitlines()), end="", flush=True)
                print(next(outputs), end="", flush=True)
        finally:
            tempfile.tempdir = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
