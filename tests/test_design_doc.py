"""docs/DESIGN.md keeps up with the code: every check reads the code at test time.

When one of these fails, the code changed something the design document states
(a crash point, an exit code, a module, a constant, the index schema, a record
key, a route): update docs/DESIGN.md in the same change.
"""

from __future__ import annotations

import ast
import inspect
import re
import struct
from pathlib import Path

import msgpack
import pytest

from imstore import errors
from imstore.index import _SCHEMA
from imstore.log import GENESIS, encode_record
from imstore.server.protocol import ROUTES
from imstore.store import Store

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "imstore"
DOC_PATH = ROOT / "docs" / "DESIGN.md"
DOC = DOC_PATH.read_text("utf-8")


def section(title: str) -> str:
    """The text under the heading that contains title, up to the next heading of the same or a higher level."""
    lines = DOC.splitlines()
    for start, line in enumerate(lines):
        heading = re.match(r"(#+) ", line)
        if heading and title in line:
            level = len(heading.group(1))
            end = next(
                (i for i in range(start + 1, len(lines)) if (h := re.match(r"(#+) ", lines[i])) and len(h.group(1)) <= level),
                len(lines),
            )
            return "\n".join(lines[start + 1 : end])
    raise AssertionError(f"docs/DESIGN.md has no heading containing {title!r}")


def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row in text (header and separator rows included)."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines() if line.lstrip().startswith("|")]


def first_cells(text: str) -> set[str]:
    return {row[0] for row in table_rows(text)}


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_assignments() -> dict[str, set[str]]:
    """NAME -> {'NAME = expr', ...}: every module-level UPPER_CASE assignment in imstore/, as written (comment dropped)."""
    found: dict[str, set[str]] = {}
    for path in sources():
        for line in path.read_text("utf-8").splitlines():
            match = re.match(r"([A-Z][A-Z0-9_]*) = (.+)$", line)
            if match:
                expr = re.sub(r"\s+#.*$", "", match.group(2)).strip()
                found.setdefault(match.group(1), set()).add(f"{match.group(1)} = {expr}")
    return found


# ---------------------------------------------------------------- crash points
def crash_point_names() -> set[str]:
    names = set()
    for path in sources():
        names.update(re.findall(r"""crash_point\(\s*["']([^"']+)["']\s*\)""", path.read_text("utf-8")))
    return names


def test_every_crash_point_is_documented():
    names = crash_point_names()
    assert len(names) >= 5, f"found too few crash_point(...) calls in imstore/: {names}"
    table = first_cells(section("Crash points"))
    missing = sorted(name for name in names if f"`{name}`" not in table)
    assert not missing, f"crash points missing from the table in docs/DESIGN.md: {missing}"
    stale = sorted(cell.strip("`") for cell in table if cell.startswith("`") and cell.strip("`") not in names)
    assert not stale, f"docs/DESIGN.md lists crash points the code no longer has: {stale}"


# ---------------------------------------------------------------- exit codes
def exit_codes() -> set[int]:
    codes = set()
    tree = ast.parse((PACKAGE / "errors.py").read_text("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "exit_code" for t in node.targets):
            codes.add(ast.literal_eval(node.value))
    tree = ast.parse((PACKAGE / "cli" / "__init__.py").read_text("utf-8"))
    for node in tree.body:  # EXIT_OK, EXIT_ERROR, ... = 0, 1, ...
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], (ast.Name, ast.Tuple)):
            target = node.targets[0]
            names = [target] if isinstance(target, ast.Name) else target.elts
            values = [node.value] if isinstance(target, ast.Name) else getattr(node.value, "elts", [])
            for name, value in zip(names, values, strict=False):
                if isinstance(name, ast.Name) and name.id.startswith("EXIT_"):
                    codes.add(ast.literal_eval(value))
    return codes


def test_every_exit_code_is_documented():
    codes = exit_codes()
    assert {0, 1, 2}.issubset(codes), codes
    documented = first_cells(section("exit codes"))
    missing = sorted(code for code in codes if str(code) not in documented)
    assert not missing, f"exit codes missing from docs/DESIGN.md: {missing}"


def test_every_error_class_has_its_exit_code_and_http_status():
    text = section("exit codes")
    rows = table_rows(text)
    classes = [cls for _name, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, errors.ImstoreError)]
    assert len(classes) > 10
    wrong = []
    for cls in classes:
        row = next((row for row in rows if f"`{cls.__name__}`" in re.split(r",\s*", row[0])), None)
        if row is None or row[1:3] != [str(cls.exit_code), str(cls.http_status)]:
            wrong.append(f"{cls.__name__} (exit {cls.exit_code}, HTTP {cls.http_status}): {row}")
    assert not wrong, "error classes missing or wrong in docs/DESIGN.md:\n" + "\n".join(wrong)


# ---------------------------------------------------------------- modules
def test_every_module_is_in_the_module_map():
    modules = {path.name for path in PACKAGE.glob("*.py")} | {
        f"{package}/{path.name}" for package in ("server", "cli") for path in (PACKAGE / package).glob("*.py")
    }
    documented = {cell.strip("`") for cell in first_cells(section("Module map")) if cell.startswith("`")}
    missing = sorted(modules - documented)
    assert not missing, f"modules missing from the module map in docs/DESIGN.md: {missing}"
    gone = sorted(name for name in documented if not (PACKAGE / name).exists())
    assert not gone, f"the module map names files that do not exist: {gone}"


# ---------------------------------------------------------------- constants
def test_quoted_constants_match_the_code():
    assignments = module_assignments()
    quoted = set(re.findall(r"`([A-Z][A-Z0-9_]* = [^`]+)`", DOC))
    assert len(quoted) >= 20, quoted
    wrong = sorted(q for q in quoted if q not in assignments.get(q.split(" = ", 1)[0], set()))
    assert not wrong, f"constants quoted in docs/DESIGN.md that differ from the code: {wrong}"


def test_appendix_rows_name_the_right_file_and_sizes():
    problems = []
    for row in table_rows(section("Appendix: constants"))[2:]:
        file, quoted, used_for = row[0], row[1].strip("`"), row[2]
        if quoted not in (PACKAGE / file).read_text("utf-8").splitlines() and not any(
            line.startswith(quoted + "  #") for line in (PACKAGE / file).read_text("utf-8").splitlines()
        ):
            problems.append(f"{file}: {quoted}")
        size = re.fullmatch(r"(\d+) bytes", used_for)
        fmt = re.fullmatch(r'[A-Z_]+ = struct\.Struct\("([^"]+)"\)', quoted)
        if size and fmt and struct.calcsize(fmt.group(1)) != int(size.group(1)):
            problems.append(f"{quoted} is {struct.calcsize(fmt.group(1))} bytes, not {used_for}")
    assert not problems, problems


# ---------------------------------------------------------------- formats
def test_index_schema_is_quoted_verbatim():
    assert _SCHEMA.strip() in section("index.sqlite"), "docs/DESIGN.md section index.sqlite must quote index._SCHEMA as it is"


def test_record_keys_are_the_documented_ones():
    payload = encode_record(
        seq=1, time_ns=1, op="put", key="k", version=1, hash="0" * 64, size=0, content_type=None, meta={}, message=None, prev=GENESIS
    )
    keys = {f"`{key}`" for key in msgpack.unpackb(payload, raw=False)}
    documented = {cell for cell in first_cells(section("Payload: a record or a batch")) if cell.startswith("`")}
    assert keys == documented, f"record keys in the code {sorted(keys)} vs docs/DESIGN.md {sorted(documented)}"


def test_config_keys_are_the_documented_ones(tmp_path):
    store, _created = Store.init(tmp_path / "store")
    store.close()
    config = msgpack.unpackb((tmp_path / "store" / "config").read_bytes(), raw=False)
    keys = {f"`{key}`" for key in config}
    documented = {cell for cell in first_cells(section("`config`")) if cell.startswith("`")}
    assert keys == documented, f"config keys in the code {sorted(keys)} vs docs/DESIGN.md {sorted(documented)}"


def test_idempotency_columns_are_documented():
    source = (PACKAGE / "server" / "idempotency.py").read_text("utf-8")
    create = re.search(r"CREATE TABLE IF NOT EXISTS requests \((.*?)\)\"", source, re.S)
    assert create, "no CREATE TABLE in server/idempotency.py"
    columns = re.findall(r"(\w+) (?:TEXT|INTEGER|REAL)", create.group(1).replace('"', ""))
    text = section("idempotency.sqlite")
    missing = [column for column in columns if f"`{column}`" not in text]
    assert columns and not missing, f"ledger columns missing from docs/DESIGN.md: {missing}"


def test_stat_cache_document_keys_are_documented():
    source = (PACKAGE / "statcache.py").read_text("utf-8")
    document = re.search(r"document = \{(.*?)\}\n", source)
    assert document, "statcache.py no longer builds `document = {...}`"
    keys = {f"`{key}`" for key in re.findall(r'"(\w+)":', document.group(1))}
    documented = {cell for cell in first_cells(section("import-cache/")) if cell.startswith("`")}
    assert keys == documented, f"stat cache keys in the code {sorted(keys)} vs docs/DESIGN.md {sorted(documented)}"


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.template)
def test_every_route_and_method_is_in_the_http_table(route):
    rows = [row for row in table_rows(section("HTTP API")) if row[0] == f"`{route.template}`"]
    methods = {method for row in rows for method in re.split(r",\s*", row[1])}
    missing = [method for method in route.methods if method not in methods]
    assert rows and not missing, f"{route.template}: methods {missing or list(route.methods)} missing from docs/DESIGN.md"


def test_readme_links_the_design_document():
    assert "docs/DESIGN.md" in (ROOT / "README.md").read_text("utf-8")
