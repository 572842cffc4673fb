"""griffe extensions for the API reference (mkdocs.yml names them; tests/test_docs.py loads them too).

`FieldComments`: massact documents each config and result field where it is declared, as a comment on its line:

    top_k: int = 16  # largest activations kept per block

(or, for a declaration too long for one, in `#:` lines right above it). griffe reads no comments, so without it
the reference would list the field bare. An attribute with a docstring of its own keeps it; a field with neither
stays bare (tests/test_docs.py fails on a bare config field).

`ImportedOverSubmodule`: `from massact.quant.run import run` in a package's `__init__` makes `massact.quant.run` the
function at run time, but griffe keeps the submodule under that name, and the reference would leave `run` out.
"""

from __future__ import annotations

import io
import tokenize

from griffe import Alias, Attribute, Docstring, Extension, GriffeLoader, Module


def trailing_comment(line: str) -> str | None:
    """The text of the comment that ends `line` (never a `#` inside a string), or None."""
    tokens = []
    try:  # a line that opens a bracket closed on a later line ends in an error after its comment was read
        for token in tokenize.generate_tokens(io.StringIO(line.strip()).readline):
            tokens.append(token)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    comments = [t.string for t in tokens if t.type == tokenize.COMMENT]
    if not comments:
        return None
    text = comments[-1].lstrip("#").strip()
    return text if text and not text.startswith(("noqa", "type:", "pragma")) else None


def above_comment(file_lines: list[str], lineno: int) -> str | None:
    """The `#:` comment lines right above line `lineno` (for a declaration too long to end in a comment)."""
    texts = []
    index = lineno - 2
    while index >= 0 and file_lines[index].strip().startswith("#:"):
        texts.insert(0, file_lines[index].strip()[2:].strip())
        index -= 1
    return " ".join(texts) or None


def as_markdown(comment: str) -> str:
    """The comment as Markdown: capitalised, and its brackets (shapes such as `[image][block]`) kept literal
    outside code spans, where Markdown would read them as links."""
    parts = comment.split("`")
    for index in range(0, len(parts), 2):  # the even parts lie outside backticks
        parts[index] = parts[index].replace("[", "\\[").replace("]", "\\]")
    text = "`".join(parts)
    return text[:1].upper() + text[1:]


class FieldComments(Extension):
    """Give each class attribute without a docstring the comment on its first or last line."""

    def on_attribute_instance(self, *, attr: Attribute, agent: object, **kwargs: object) -> None:
        if attr.docstring is not None or attr.parent is None or not attr.parent.is_class or attr.lineno is None:
            return
        lines = attr.lines  # the declaration's source lines
        if not lines:
            return
        found = [
            (n, trailing_comment(line))
            for n, line in ((attr.lineno, lines[0]), (attr.lineno + len(lines) - 1, lines[-1]))
        ]
        found.append((attr.lineno - 1, above_comment(attr.lines_collection[attr.filepath], attr.lineno)))
        for number, text in found:
            if text:
                attr.docstring = Docstring(
                    as_markdown(text),
                    lineno=number,
                    endlineno=number,
                    parent=attr,
                    parser=getattr(agent, "docstring_parser", None),
                    parser_options=getattr(agent, "docstring_options", None),
                )
                return


class ImportedOverSubmodule(Extension):
    """In every package, a name its `__init__` imports from the submodule of the same name is that import."""

    def on_package(self, *, pkg: Module, loader: GriffeLoader, **kwargs: object) -> None:
        self._fix(pkg)

    def _fix(self, module: Module) -> None:
        for name, member in list(module.members.items()):
            if not isinstance(member, Module) or member.is_alias:
                continue
            self._fix(member)
            # a package keeps its name (`massact.scan` is the package, whatever massact imports for type checkers)
            if (
                not member.is_init_module
                and module.imports.get(name) == f"{member.path}.{name}"
                and name in member.members
            ):
                module.set_member(name, Alias(name, member.members[name], parent=module))
