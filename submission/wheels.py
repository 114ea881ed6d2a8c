"""The wheels the Kaggle notebook installs offline: which, for which Python, fetched from where.

Kaggle runs the submission notebook with the internet off, so whatever its image lacks must ride
in the kit's dataset as wheels (dist/dataset/wheels/), installed by submission/kaggle_setup.py with
`pip install --no-index` and only when the package is not importable already.

The wheels are fetched for Kaggle's interpreter and platform, never this machine's:

    python -m pip download --no-deps --only-binary=:all: --implementation cp \\
        --python-version 3.11 --platform manylinux_2_28_x86_64 --platform ... -d <cache> onnxruntime==1.32.0

into a persistent cache (submission/wheels-cache/, git-ignored; BIRDKIT_WHEEL_CACHE moves it), so a
second `make package` reuses them without the network.

What Kaggle's image lacks, from Kaggle/docker-python's published package list of its CPU image:
numpy, pandas, scipy, librosa, soundfile, soxr, audioread, matplotlib, joblib, tqdm and onnxruntime's
own dependencies (flatbuffers, packaging, protobuf, numpy) are there; onnxruntime and noisereduce
are not. So the kit bundles onnxruntime always and noisereduce when the model's features use the
library (FeatureConfig.denoise == "noisereduce"); "spectral" is the kit's own numpy code.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from data.paths import REPO

WHEELS_DIR = "wheels"  # inside the packaged dataset
CACHE_ENV = "BIRDKIT_WHEEL_CACHE"
NO_INDEX_HINT = ("Run `make package` where PyPI is reachable, or pass --no-wheels "
                 "(PACKAGE_ARGS=--no-wheels) and attach the wheels dataset yourself.")


@dataclass(frozen=True)
class Wheel:
    """One package the notebook imports: its PyPI name, pinned version and import name."""

    dist: str
    version: str
    import_name: str
    why: str = ""

    @property
    def spec(self) -> str:
        return f"{self.dist}=={self.version}"


# The one list of what the notebook may have to install. The versions are the kit's own pins
# (Makefile ORT_VERSION, requirements.txt); tests/test_wheels.py checks they agree.
ONNXRUNTIME = Wheel("onnxruntime", "1.32.0", "onnxruntime",
                    "runs model.onnx; not in Kaggle's image (its deps flatbuffers/numpy/packaging/protobuf are)")
NOISEREDUCE = Wheel("noisereduce", "3.0.3", "noisereduce",
                    "denoise='noisereduce' features; not in Kaggle's image (its deps are)")


@dataclass(frozen=True)
class WheelConfig:
    """Which wheels, for which Kaggle interpreter(s) and platform(s).

    Two Python versions by default: the issue names 3.11, while Kaggle's current image (built on a
    Colab base) is reported to run 3.12; a wheel of each costs ~28 MB and pip on Kaggle picks the
    one its interpreter accepts. The notebook prints its Python version next to what it installed.
    """

    python_versions: tuple[str, ...] = ("3.11", "3.12")
    platforms: tuple[str, ...] = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
    implementation: str = "cp"
    packages: tuple[Wheel, ...] = field(default=(ONNXRUNTIME,))

    def __post_init__(self):
        for v in self.python_versions:
            if not re.fullmatch(r"3\.\d+", v):
                raise ValueError(f"python version must look like 3.11, got {v!r}")
        if not self.python_versions or not self.platforms:
            raise ValueError("need at least one python version and one platform")

    def requirements(self) -> dict[str, str]:
        """import name -> pip requirement, what kaggle_setup.install_missing takes."""
        return {w.import_name: w.spec for w in self.packages}


def kit_wheels(denoise: str) -> tuple[Wheel, ...]:
    """What the packaged notebook imports beyond Kaggle's image, for a model with these features."""
    return (ONNXRUNTIME, NOISEREDUCE) if denoise == "noisereduce" else (ONNXRUNTIME,)


def config_for(features: dict, python_versions: Sequence[str] | None = None) -> WheelConfig:
    """The wheel config for a model whose FeatureConfig is `features` (the ONNX metadata's dict)."""
    from data.features import FeatureConfig

    base = WheelConfig()
    return WheelConfig(python_versions=tuple(python_versions or base.python_versions), platforms=base.platforms,
                       implementation=base.implementation, packages=kit_wheels(FeatureConfig.from_dict(features).denoise))


def default_cache_dir() -> Path:
    """Downloads kept across runs and across BIRDKIT_ROOTs: they depend on nothing but the pins."""
    return Path(os.environ.get(CACHE_ENV) or REPO / "submission" / "wheels-cache")


class WheelError(RuntimeError):
    """The wheels could not be had; the message says what to do."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


# ---------------------------------------------------------------- which file fits Kaggle


def supported_tags(cfg: WheelConfig, python_version: str) -> list[str]:
    """The wheel tags Kaggle's interpreter accepts, most specific first (pip's order)."""
    from packaging import tags

    major, minor = (int(x) for x in python_version.split("."))
    interpreter = f"{cfg.implementation}{major}{minor}"
    found = []
    if cfg.implementation == "cp":
        found += tags.cpython_tags((major, minor), abis=[interpreter], platforms=list(cfg.platforms))
    found += tags.compatible_tags((major, minor), interpreter=interpreter, platforms=list(cfg.platforms))
    return [str(t) for t in found]


def cached_wheel(cache_dir: Path, wheel: Wheel, cfg: WheelConfig, python_version: str) -> Path | None:
    """The best file in cache_dir for `wheel` on Kaggle's interpreter, or None."""
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
    from packaging.version import Version

    rank = {tag: i for i, tag in enumerate(supported_tags(cfg, python_version))}
    best: tuple[int, Path] | None = None
    for path in sorted(cache_dir.glob("*.whl")) if cache_dir.is_dir() else []:
        try:
            name, version, _, file_tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        if name != canonicalize_name(wheel.dist) or version != Version(wheel.version):
            continue
        ranks = [rank[str(t)] for t in file_tags if str(t) in rank]
        if ranks and (best is None or min(ranks) < best[0]):
            best = (min(ranks), path)
    return best[1] if best else None


# ---------------------------------------------------------------- pip download


def pip_download_command(cfg: WheelConfig, python_version: str, specs: Sequence[str], dest: Path) -> list[str]:
    """pip download of `specs` as built for Kaggle's interpreter and platform, binary wheels only.
    -vv: the output is kept, not shown, and only then does pip log why an index could not be read."""
    platforms = [arg for p in cfg.platforms for arg in ("--platform", p)]
    return [sys.executable, "-m", "pip", "download", "-vv", "--no-deps", "--only-binary=:all:",
            "--python-version", python_version, *platforms, "--implementation", cfg.implementation,
            "--progress-bar", "off", "-d", str(dest), *specs]


# What pip logs (at -vv, or while retrying) when it cannot talk to an index at all; a 404 is no such thing.
_UNREACHABLE = re.compile(
    r"connection error|NewConnectionError|Failed to establish a new connection|NameResolutionError|"
    r"Temporary failure in name resolution|Name or service not known|nodename nor servname|Connection refused|"
    r"Network is unreachable|ConnectTimeout|Read timed out|ProxyError|SSLError|connection broken", re.I)


def _reason(output: str) -> str:
    for pattern, reason in ((r"name resolution|Name or service not known|nodename", "DNS lookup failed"),
                            (r"Connection refused", "connection refused"), (r"timed out|Timeout", "timed out"),
                            (r"ProxyError", "proxy error"), (r"SSLError", "TLS error")):
        if re.search(pattern, output, re.I):
            return reason
    return "no connection"


def download(cfg: WheelConfig, python_version: str, wheels: Sequence[Wheel], cache_dir: Path,
             run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """Ask pip for `wheels` as Kaggle needs them, into cache_dir (whole files only: pip writes into a
    private folder, then each wheel is renamed into the cache, which other runs may be reading)."""
    specs = [w.spec for w in wheels]
    where = f"Python {python_version}, {cfg.implementation}, {' / '.join(cfg.platforms)}"
    print(f"wheels: downloading {', '.join(specs)} for Kaggle ({where}) into {cache_dir}")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
        cmd = pip_download_command(cfg, python_version, specs, Path(tmp))
        result = run(cmd, capture_output=True, text=True)
        for path in Path(tmp).glob("*.whl"):
            os.replace(path, cache_dir / path.name)
    if result.returncode == 0:
        return
    output = (result.stdout or "") + (result.stderr or "")
    if _UNREACHABLE.search(output):
        raise WheelError(f"pip could not reach the package index to download {', '.join(specs)} for Kaggle "
                         f"({where}): {_reason(output)}.\n  {NO_INDEX_HINT}", unreachable=True)
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR")] or output.splitlines()[-3:]
    raise WheelError(f"pip found no wheel of {', '.join(specs)} for Kaggle ({where}):\n  "
                     + "\n  ".join(errors)
                     + "\n  Check the pins in submission/wheels.py and --python-version; or pass --no-wheels "
                       "and attach the wheels dataset yourself.")


def fetch_wheels(cfg: WheelConfig, dest: Path, cache_dir: Path | None = None,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[Path]:
    """Every wheel of cfg for each Kaggle interpreter: from the cache, else downloaded into it;
    then copied into dest. Returns the copies, sorted (a pure-Python wheel serves every version)."""
    cache_dir = Path(cache_dir or default_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    chosen: dict[str, Path] = {}
    for python_version in cfg.python_versions:
        missing = [w for w in cfg.packages if cached_wheel(cache_dir, w, cfg, python_version) is None]
        if missing:
            download(cfg, python_version, missing, cache_dir, run)
        for wheel in cfg.packages:
            path = cached_wheel(cache_dir, wheel, cfg, python_version)
            if path is None:
                raise WheelError(f"pip downloaded {wheel.spec}, but no file in {cache_dir} fits Python {python_version} "
                                 f"on {', '.join(cfg.platforms)}: delete {cache_dir} and rerun")
            chosen[path.name] = path
    dest.mkdir(parents=True, exist_ok=True)
    for name, path in sorted(chosen.items()):
        shutil.copy2(path, dest / name)
    return [dest / name for name in sorted(chosen)]
