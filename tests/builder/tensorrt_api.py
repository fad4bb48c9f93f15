"""Static check of the TensorRT and CUDA names our two TensorRT modules use, against the real
bindings from PyPI (TensorRT cannot run here, so this is what stands between a renamed call and a
user's first GPU build).

Collect: an AST pass over a module finds the values that come from ``tensorrt`` or
``cuda.bindings.runtime`` (the module itself, ``importlib.import_module("tensorrt")``, names and
``self.`` attributes assigned from them, calls on them, ``_check(...)`` which unwraps
cuda-python's ``(error, *values)``, tuples unpacked from a helper that returns the modules) and
records every attribute read on such a value, with its chain from the module.

Check, per library:
- ``cuda.bindings.runtime`` imports without a GPU, so each chain is replayed on the real module:
  ``getattr`` for attributes; for a call, the types its docstring's *Returns* section lists
  (``cudaGetDeviceProperties`` -> ``cudaError_t, cudaDeviceProp``), instantiated where they can
  be. A chain that cannot be replayed falls back to "some class of the module has the name".
- ``tensorrt`` needs libnvinfer to import, so its compiled ``tensorrt.so`` is read as data: a
  name is confirmed if it is one of the module's identifier strings, or the tail of one (the
  linker stores ``Logger`` inside ``ILogger``), or defined by the package's Python ``__init__``
  (``nptype``).

Limits: names, not signatures, argument types or return types; for TensorRT a name is checked
against the whole module, not against the class it is read on (``config.set_shape`` would pass
because ``IOptimizationProfile.set_shape`` exists); a tail match is weaker evidence than an exact
one (the report says which confirmed each name).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PINS = ROOT / "images" / "versions.env"  # the worker image's TensorRT, pinned in one place
SOURCES = (
    ROOT / "worker" / "trtops_worker" / "builder" / "engine_tensorrt.py",
    ROOT / "worker" / "trtops_worker" / "serve" / "backend_tensorrt.py",
)
TENSORRT = "tensorrt"
CUDA_RUNTIME = "cuda.bindings.runtime"
_MODULES = {"tensorrt": TENSORRT, "cuda.bindings.runtime": CUDA_RUNTIME}
_CHECK_HELPER = "_check"  # both modules' helper: (error, *values) -> values

Step = tuple[str, ...]  # ("attr", name) | ("call",) | ("check",) | ("index", i)
Chain = tuple[str, tuple[Step, ...]]  # (library, steps from the module)


@dataclass(frozen=True)
class Use:
    """One attribute read on a value that came from ``library``."""

    library: str
    chain: tuple[Step, ...]  # how the value it is read on was reached from the module
    name: str
    source: str
    line: int

    @property
    def on_module(self) -> bool:
        return not self.chain

    def dotted(self) -> str:
        parts = [self.library]
        for step in self.chain:
            parts.append(step[1] if step[0] == "attr" else "()" if step[0] == "call" else "")
        return ".".join(p for p in parts if p) + "." + self.name


# --- collect ---------------------------------------------------------------------------------


class _Collector:
    def __init__(self, source: str, label: str) -> None:
        self.tree = ast.parse(source)
        self.label = label
        self.names: dict[tuple[tuple[str, ...], str], Chain] = {}  # (scope, name) -> chain
        self.returns: dict[str, list[Chain | None] | Chain] = {}  # function -> return value
        self.uses: list[Use] = []

    # scope: enclosing class/function names; plain names are looked up innermost first
    def _lookup(self, scope: tuple[str, ...], key: str) -> Chain | None:
        for i in range(len(scope), -1, -1):
            found = self.names.get((scope[:i], key))
            if found is not None:
                return found
        return None

    def value(self, node: ast.expr, scope: tuple[str, ...]) -> Chain | None:
        if isinstance(node, ast.Name):
            return self._lookup(scope, node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return self._lookup(scope, "self." + node.attr)
            base = self.value(node.value, scope)
            return (base[0], (*base[1], ("attr", node.attr))) if base else None
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == _CHECK_HELPER and node.args:
                base = self.value(node.args[0], scope)
                return (base[0], (*base[1], ("check",))) if base else None
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in _MODULES
            ):
                return (_MODULES[node.args[0].value], ())
            if isinstance(func, ast.Name) and isinstance(self.returns.get(func.id), tuple):
                returned = self.returns[func.id]
                assert isinstance(returned, tuple)
                return returned
            base = self.value(func, scope)
            return (base[0], (*base[1], ("call",))) if base else None
        if isinstance(node, ast.Subscript):
            base = self.value(node.value, scope)
            return (base[0], (*base[1], ("index", "?"))) if base else None
        return None

    def _values(self, node: ast.expr, scope: tuple[str, ...], n: int) -> list[Chain | None]:
        """What a tuple target of ``n`` names receives from ``node``."""
        if isinstance(node, ast.Tuple) and len(node.elts) == n:
            return [self.value(e, scope) for e in node.elts]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            returned = self.returns.get(node.func.id)
            if isinstance(returned, list) and len(returned) == n:
                return returned
        whole = self.value(node, scope)
        return [(whole[0], (*whole[1], ("index", str(i)))) if whole else None for i in range(n)]

    def _bind(self, target: ast.expr, chain: Chain | None, scope: tuple[str, ...]) -> bool:
        if chain is None:
            return False
        if isinstance(target, ast.Name):
            key = (scope, target.id)
        elif (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
        ):
            key = (scope[:1], "self." + target.attr)  # instance attributes: class scope
        else:
            return False
        if self.names.get(key) == chain:
            return False
        self.names[key] = chain
        return True

    def _assign(self, targets: list[ast.expr], value: ast.expr, scope: tuple[str, ...]) -> bool:
        changed = False
        for target in targets:
            if isinstance(target, ast.Tuple):
                values = self._values(value, scope, len(target.elts))
                for t, v in zip(target.elts, values, strict=True):
                    changed |= self._bind(t, v, scope)
            else:
                changed |= self._bind(target, self.value(value, scope), scope)
        return changed

    def _walk(
        self, node: ast.AST, scope: tuple[str, ...]
    ) -> Iterator[tuple[ast.AST, tuple[str, ...]]]:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                inner = (*scope, child.name)
            yield child, inner
            yield from self._walk(child, inner)

    def _bind_pass(self) -> bool:
        changed = False
        for node, scope in self._walk(self.tree, ()):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    full = (
                        f"{node.module}.{alias.name}"
                        if isinstance(node, ast.ImportFrom)
                        else alias.name
                    )
                    if full in _MODULES:
                        local = alias.asname or alias.name.split(".")[0]
                        changed |= self._bind(ast.Name(local), (_MODULES[full], ()), scope)
            elif isinstance(node, ast.Assign):
                changed |= self._assign(node.targets, node.value, scope)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                changed |= self._assign([node.target], node.value, scope)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Return) and ret.value is not None:
                        inner = (*scope,)
                        returned: list[Chain | None] | Chain | None
                        if isinstance(ret.value, ast.Tuple):
                            returned = [self.value(e, inner) for e in ret.value.elts]
                            if not any(returned):
                                returned = None
                        else:
                            returned = self.value(ret.value, inner)
                        if returned and self.returns.get(node.name) != returned:
                            self.returns[node.name] = returned
                            changed = True
        return changed

    def collect(self) -> list[Use]:
        for _ in range(20):  # to a fixpoint: a method may use what a later one assigns
            if not self._bind_pass():
                break
        for node, scope in self._walk(self.tree, ()):
            if isinstance(node, ast.Attribute):
                base = None
                if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                    base = self.value(node.value, scope)
                if base is not None:
                    self.uses.append(Use(base[0], base[1], node.attr, self.label, node.lineno))
        return self.uses


def collect_uses(source: str, label: str = "<source>") -> list[Use]:
    """Every attribute read on a ``tensorrt`` / ``cuda.bindings.runtime`` value in ``source``."""
    return _Collector(source, label).collect()


# --- the bindings ----------------------------------------------------------------------------


def pins() -> dict[str, str]:
    """``KEY=VALUE`` lines of the pin file, plus the two wheels the check reads."""
    values = {}
    for line in PINS.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    values["TENSORRT_BINDINGS_WHEEL"] = f"tensorrt-cu13-bindings=={values['TENSORRT_VERSION']}"
    values["CUDA_BINDINGS_WHEEL"] = f"cuda-bindings=={values['CUDA_BINDINGS_VERSION']}"
    return values


def download(requirement: str, cache: Path) -> Path:
    """The wheel for ``requirement`` (``name==version``), fetched once with pip into ``cache``."""
    name, _, version = requirement.partition("==")
    stem = name.replace("-", "_")
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
             "--dest", str(cache), requirement],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip downloaded no wheel for {requirement} into {cache}")
    return found[0]


class TensorRTSymbols:
    """Names in TensorRT's compiled bindings (read as data: importing needs libnvinfer)."""

    def __init__(self, wheel: Path) -> None:
        with zipfile.ZipFile(wheel) as z:
            so = next(n for n in z.namelist() if n.endswith("/tensorrt.so"))
            data = z.read(so)
            init = z.read(so.rsplit("/", 1)[0] + "/__init__.py").decode()
        self.version = wheel.name.split("-")[1]
        strings = re.findall(rb"(?<=\x00)[A-Za-z_][A-Za-z0-9_]*(?=\x00)", data)
        self.exact = {s.decode() for s in strings}
        self.python = {  # defined in the package's __init__.py: functions, classes, constants
            getattr(node, "name", None) or getattr(target, "id", "")
            for node in ast.parse(init).body
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Assign)
            for target in (node.targets if isinstance(node, ast.Assign) else [node])
        }

    def confirm(self, use: Use) -> str | None:
        """How ``use.name`` was found (``exact``/``tail``/``python``), ``None`` if it was not."""
        name = use.name
        if name in self.exact:
            return "exact"
        if use.on_module and name in self.python:
            return "python"
        if any(s.endswith(name) for s in self.exact):
            return "tail"
        return None


_RETURNS = re.compile(r"\nReturns\n-------\n(.*?)(?:\n\n[A-Z][^\n]*\n-{3,}|\Z)", re.S)


class CudaRuntime:
    """``cuda.bindings.runtime`` imported from the pinned wheel (it imports without a GPU)."""

    def __init__(self, wheel: Path, unpack: Path) -> None:
        if not (unpack / "cuda").is_dir():
            with zipfile.ZipFile(wheel) as z:
                z.extractall(unpack)
        self.version = wheel.name.split("-")[1]
        saved = {k: v for k, v in sys.modules.items() if k == "cuda" or k.startswith("cuda.")}
        for k in saved:
            del sys.modules[k]
        sys.path.insert(0, str(unpack))
        try:
            self.module: Any = importlib.import_module(CUDA_RUNTIME)
        finally:
            sys.path.remove(str(unpack))
        self.class_names = {
            attr
            for value in vars(self.module).values()
            if isinstance(value, type)
            for attr in dir(value)
        }

    def _returned(self, function: Any) -> list[Any] | None:
        match = _RETURNS.search(getattr(function, "__doc__", None) or "")
        if not match:
            return None
        types = []
        for line in match.group(1).splitlines():
            if not line or line[0].isspace():
                continue
            text = line.split(" : ", 1)[-1]
            name = re.sub(r":py:obj:`~?\.?([A-Za-z_0-9]+)`", r"\1", text).strip()
            types.append(getattr(self.module, name, getattr(builtins, name, None)))
        return types

    def replay(self, chain: tuple[Step, ...]) -> tuple[bool, Any]:
        """(True, value) where the chain could be followed on the real module."""
        value: Any = self.module
        for step in chain:
            if step[0] == "attr":
                if not hasattr(value, step[1]):
                    return False, None
                value = getattr(value, step[1])
            elif step[0] == "call":
                returned = self._returned(value)
                if returned is None:
                    return False, None
                value = ("returned", returned)
            elif step[0] == "check" and isinstance(value, tuple) and value[0] == "returned":
                rest = value[1][1:]
                if len(rest) != 1 or rest[0] is None:
                    return False, None
                try:
                    value = rest[0]()
                except Exception:
                    value = rest[0]
            else:
                return False, None
        return True, value

    def confirm(self, use: Use) -> str | None:
        followed, value = self.replay(use.chain)
        if followed:
            return "import" if hasattr(value, use.name) else None
        return "class" if use.name in self.class_names else None


def check(uses: list[Use], trt: TensorRTSymbols, cuda: CudaRuntime) -> list[tuple[Use, str | None]]:
    """Each use with how it was confirmed, ``None`` where the bindings lack the name."""
    return [(u, (trt if u.library == TENSORRT else cuda).confirm(u)) for u in uses]


def sources_uses() -> list[Use]:
    uses: list[Use] = []
    for path in SOURCES:
        uses += collect_uses(path.read_text(), str(path.relative_to(ROOT)))
    return uses


def main() -> int:
    """``python -m tests.builder.tensorrt_api``: each name, where it is used, how it was
    confirmed."""
    values = pins()
    cache = Path.home() / ".cache" / "trtops" / "wheels"
    trt = TensorRTSymbols(download(values["TENSORRT_BINDINGS_WHEEL"], cache))
    cuda = CudaRuntime(download(values["CUDA_BINDINGS_WHEEL"], cache), cache / "cuda-bindings")
    results = check(sources_uses(), trt, cuda)
    print(f"tensorrt bindings {trt.version}, cuda-bindings {cuda.version}")
    seen: dict[tuple[str, str], tuple[str | None, list[str]]] = {}
    for use, how in results:
        key = (use.library, use.name)
        where = f"{Path(use.source).name}:{use.line}"
        seen.setdefault(key, (how, []))[1].append(where)
    for (library, name), (how, where) in sorted(seen.items()):
        print(f"{library:22} {name:32} {how or 'MISSING':8} {', '.join(where)}")
    return 1 if any(how is None for how, _ in seen.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
