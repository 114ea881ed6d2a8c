"""`make data`: download a BirdCLEF competition from Kaggle, unpack it safely and check its layout.

    python -m data.download --competition birdclef-2024 --out data/birdclef-2024
    python -m data.download --zip ~/Downloads/birdclef-2024.zip --out data/birdclef-2024   # offline

Nothing half-written ever appears in --out:

    <out>.partial/<competition>.zip   the download; an interrupted one is resumed from here
    <out>.unzipping/                  the unzip; a leftover one (interrupted) is wiped and redone
    <out>/                            appears in one rename, once the unzipped data passed validation

The download goes through the real `kaggle` client, with the credentials the kaggle CLI uses.
The Kaggle key is never printed: messages name where the credentials came from, never their value.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import io
import json
import os
import shutil
import stat
import sys
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import requests

from data.layout import (DEFAULT_COMPETITION, LONG_TABLE_COMPETITIONS, TEST_SOUNDSCAPE_S,
                         LayoutError, LayoutReport, find_metadata, long_table_refusal, missing_entries, validate_layout)
from data.paths import free_bytes, human_bytes

SETTINGS_URL = "https://www.kaggle.com/settings/api"
COMPETITION_URL = "https://www.kaggle.com/competitions/{competition}"
# The zip plus its contents: BirdCLEF audio is OGG, which zip barely compresses (~1.1x), plus slack.
SPACE_FACTOR = 2.2


class DownloadError(Exception):
    """A failure the user can fix; main prints it as `error: <message>`, without a traceback."""


# ---------------------------------------------------------------- the competition


def refuse_unsupported(competition: str) -> None:
    """2021-2022 by name, before anything is downloaded (their data is gigabytes that the layout check
    would refuse only after unpacking). A slug the kit does not know yet goes ahead: Kaggle and the layout
    check judge it."""
    if competition in LONG_TABLE_COMPETITIONS:
        example = sorted(TEST_SOUNDSCAPE_S)[-1]
        raise DownloadError(
            f"{long_table_refusal(competition)},\n  the format of BirdCLEF 2023-2025.\n"
            f"  Choose one of {', '.join(sorted(TEST_SOUNDSCAPE_S))}: make data COMPETITION={example}\n"
            f"  (--competition {example} with python -m data.download)."
        )


# ---------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    source: str  # where they were found, for messages
    secret: str = field(default="", repr=False)  # the key or token: only ever used to redact
    username: str = ""

    def secrets(self) -> list[str]:
        """Every form the secret travels in: as is, and inside HTTP Basic auth."""
        if not self.secret:
            return []
        basic = base64.b64encode(f"{self.username}:{self.secret}".encode()).decode()
        return [self.secret, basic] if self.username else [self.secret]


def kaggle_config_dir() -> Path:
    """Where kaggle.json lives, by the kaggle package's own rule (KaggleApi.config_dir)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"]).expanduser()
    legacy = Path.home() / ".kaggle"
    if legacy.exists() or not sys.platform.startswith("linux"):
        return legacy
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


def _parse_kaggle_json(path: Path) -> tuple[dict | None, str | None]:
    """(its fields, or None where it cannot be read or parsed; why it is not valid JSON, or None).
    Never quotes the file: the key is in it."""
    try:
        data = json.loads(path.read_text())
    except OSError:
        return None, None  # unreadable: the generic message, naming the path, is the best we can say
    except ValueError as e:  # the decoder's position, never the text around it
        return None, f"is not valid JSON ({e})"
    return (data if isinstance(data, dict) else {}), None


def _read_kaggle_json(path: Path) -> dict:
    data, _ = _parse_kaggle_json(path)
    if data is None:
        return {}  # the kaggle client ignores such a file too; kaggle_json_problem says what is wrong with it
    if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        print(f"warning: {path} is readable by other users; run `chmod 600 {path}`", file=sys.stderr)
    return data


def kaggle_json_problem(path: Path) -> str | None:
    """What keeps the kaggle.json at path from giving the client a username and a key (where the
    environment does not): 'is not valid JSON (...)' or 'lacks "key"'. None when it is absent or fine."""
    if not path.is_file():
        return None
    data, invalid = _parse_kaggle_json(path)
    if data is None:
        return invalid
    lacking = [f'"{name}"' for name in ("username", "key")
               if not data.get(name) and not os.environ.get(f"KAGGLE_{name.upper()}")]
    return f"lacks {' and '.join(lacking)}" if lacking else None


def _access_token() -> Credentials | None:
    """The newer single-token credentials, looked up as kagglesdk.get_access_token_from_env does."""
    value = os.environ.get("KAGGLE_API_TOKEN", "").strip()
    if value:
        if Path(value).is_file():  # the variable may name a file holding the token
            return Credentials(f"the file named by KAGGLE_API_TOKEN ({value})", Path(value).read_text().strip())
        return Credentials("KAGGLE_API_TOKEN", value)
    for name in ("access_token", "access_token.txt"):
        path = Path.home() / ".kaggle" / name
        if path.is_file() and path.read_text().strip():
            return Credentials(str(path), path.read_text().strip())
    return None


def find_credentials() -> Credentials | None:
    """The credentials the kaggle client will use, or None when it has none."""
    token = _access_token()
    if token:
        return token
    config = kaggle_config_dir() / "kaggle.json"
    from_file = _read_kaggle_json(config) if config.is_file() else {}
    username = os.environ.get("KAGGLE_USERNAME") or from_file.get("username")
    key = os.environ.get("KAGGLE_KEY") or from_file.get("key")
    if username and key:
        source = "KAGGLE_USERNAME/KAGGLE_KEY" if os.environ.get("KAGGLE_KEY") else str(config)
        return Credentials(source, str(key), str(username))
    oauth = Path.home() / ".kaggle" / "credentials.json"  # written by `kaggle auth login`
    if oauth.is_file():
        return Credentials(str(oauth))
    return None


def missing_credentials_message() -> str:
    # ~/.kaggle/kaggle.json is the path Kaggle documents, and once it exists the client reads it.
    folder = os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle"
    config = Path(folder).expanduser() / "kaggle.json"
    return (
        "no Kaggle API credentials found.\n"
        f'  Create a token at {SETTINGS_URL} ("Create New Token"), save the downloaded kaggle.json as\n'
        f"  {config} and run `chmod 600 {config}`,\n"
        "  or export KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN) in this shell. Then rerun."
    )


def broken_kaggle_json_message(config: Path, problem: str) -> str:
    return (
        f"{config} {problem}, so it holds no usable Kaggle API credentials.\n"
        f'  Create a new token at {SETTINGS_URL} ("Create New Token"), save the downloaded kaggle.json in its\n'
        f"  place and run `chmod 600 {config}`. Then rerun."
    )


def require_credentials() -> Credentials:
    creds = find_credentials()
    if creds is None:
        config = kaggle_config_dir() / "kaggle.json"
        problem = kaggle_json_problem(config)
        raise DownloadError(broken_kaggle_json_message(config, problem) if problem else missing_credentials_message())
    return creds


# ---------------------------------------------------------------- talking to Kaggle


def _import_kaggle():
    """(KaggleApi, KaggleClient, get_env), imported silently: `import kaggle` prints its own help."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
            from kagglesdk import KaggleClient
            from kagglesdk.kaggle_env import get_env
    except ImportError as e:
        raise DownloadError(
            f"the kaggle client cannot be imported ({e}). Reinstall the environment: `make venv`."
        ) from None

    try:
        get_env()
    except Exception as e:  # kagglesdk raises a bare Exception for an unknown value
        raise DownloadError(f"{e}. Unset KAGGLE_API_ENVIRONMENT to use kaggle.com.") from None
    return KaggleApi, KaggleClient, get_env


def _api_class(KaggleApi, KaggleClient, get_env):
    """KaggleApi whose client honours KAGGLE_API_ENVIRONMENT and never prints the request headers."""

    class Api(KaggleApi):
        def build_kaggle_client(self):
            # kaggle 2.2.5 hands kagglesdk an explicit PROD environment, which overrides the SDK's
            # KAGGLE_API_ENVIRONMENT (TEST, STAGING, ...): honour it. verbose stays off because
            # a verbose client prints the request headers, and they carry the key.
            return KaggleClient(
                env=get_env(),
                verbose=False,
                username=self.config_values.get(self.CONFIG_NAME_USER),
                password=self.config_values.get(self.CONFIG_NAME_KEY),
                api_token=self.config_values.get(self.CONFIG_NAME_TOKEN),
                response_processor=self.get_response_processor(),
            )

    return Api


def _authenticate(api, creds: Credentials) -> None:
    # KaggleApi reads KAGGLE_CONFIG_DIR once, at import; use its value now.
    api.config_dir = str(kaggle_config_dir())
    api.config = os.path.join(api.config_dir, api.config_file)
    try:
        # Its auth help (printed before exit(1)) would only repeat our message, less precisely.
        with contextlib.redirect_stdout(io.StringIO()):
            api.authenticate()
    except SystemExit:  # what authenticate() does when the credentials we found do not work
        raise DownloadError(
            f"Kaggle did not accept the credentials from {creds.source} (inactive or expired token).\n"
            f'  Create a new token at {SETTINGS_URL} ("Create New Token"), put it in place of {creds.source}, '
            "and rerun."
        ) from None


def kaggle_api(creds: Credentials):
    """An authenticated kaggle.KaggleApi.

    Imported only here: `import kaggle` authenticates at import time, printing its own help
    when there are no credentials, so it must come after require_credentials (and is silenced:
    it would only repeat our messages).
    """
    api = _api_class(*_import_kaggle())()
    _authenticate(api, creds)
    return api


def kaggle_endpoint() -> str:
    from kagglesdk.kaggle_env import get_endpoint, get_env

    return get_endpoint(get_env())


def _kaggle_said(error: requests.HTTPError) -> str:
    """Kaggle's own explanation: the message of its JSON error body, else the HTTP reason."""
    response = error.response
    try:
        return str(response.json()["message"])
    except Exception:
        return getattr(response, "reason", None) or str(error)


def http_error_message(error: requests.HTTPError, competition: str, creds: Credentials) -> str:
    status = error.response.status_code if error.response is not None else None
    said = _kaggle_said(error)
    page = COMPETITION_URL.format(competition=competition)
    if status == 401:
        return (
            f"Kaggle rejected the credentials from {creds.source} (HTTP 401: {said}).\n"
            "  The token is mistyped, expired or was revoked: create a new one at "
            f'{SETTINGS_URL} ("Create New Token"),\n'
            f"  put it in place of {creds.source}, and rerun."
        )
    if status == 403 and "rules" in said.lower():
        return (
            f"Kaggle refused the {competition} data (HTTP 403: {said}).\n"
            f"  This account has not accepted the competition rules yet: open {page}/rules,\n"
            '  sign in, click "I Understand and Accept" (a finished competition offers "Join Competition" or\n'
            '  "Late Submission" instead), then rerun.'
        )
    if status == 403:  # Kaggle's words do not say why: the usual causes, most likely first
        return (
            f"Kaggle refused the {competition} data (HTTP 403: {said}).\n"
            f"  Accept the competition rules at {page}/rules if this account has not, check that it is\n"
            f"  phone-verified ({SETTINGS_URL}) and that '{competition}' is the competition's slug, then rerun."
        )
    if status == 404:
        return (
            f"Kaggle has no competition named '{competition}' (HTTP 404: {said}).\n"
            "  Check the slug (COMPETITION= with make, --competition with python -m data.download): BirdCLEF\n"
            "  slugs look like birdclef-2024 or birdclef-2025."
        )
    return f"Kaggle answered HTTP {status} ({said}) for {competition}; try again later."


def _connection_reason(error: Exception) -> str:
    text = str(error)
    if any(s in text for s in ("Name or service not known", "nodename nor servname", "name resolution",
                               "getaddrinfo failed", "No address associated")):
        return "DNS lookup failed"
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(error, requests.Timeout) or "timed out" in text:
        return "timed out"
    if "ProxyError" in text or "proxy" in text.lower():
        return "proxy error"
    return type(error).__name__


def make_data_command(competition: str, out: Path, data_args: str) -> str:
    """The `make data` line that downloads competition into out with data_args, leaving out what the
    Makefile's defaults already give (DATA is data/<COMPETITION>; COMPETITION is DATA's folder name
    where that is a BirdCLEF slug, else birdclef-2024)."""
    words = ["make", "data"]
    if out == Path("data") / competition:
        if competition != DEFAULT_COMPETITION:
            words.append(f"COMPETITION={competition}")
    else:
        implied = out.name if out.name.startswith("birdclef-") else DEFAULT_COMPETITION
        if competition != implied:
            words.append(f"COMPETITION={competition}")
        words.append(f"DATA={out}")
    words.append(f'DATA_ARGS="{data_args}"' if " " in data_args else f"DATA_ARGS={data_args}")
    return " ".join(words)


def manual_download_hint(competition: str, out: Path) -> str:
    return (
        f"  Or download the zip by hand from {COMPETITION_URL.format(competition=competition)}/data "
        '("Download All"),\n'
        f'  then run: make data DATA={out} DATA_ARGS="--zip path/to/{competition}.zip"\n'
        f"  (or .venv/bin/python -m data.download --zip path/to/{competition}.zip --out {out})"
    )


def unreachable_message(error: Exception, competition: str, out: Path) -> str:
    return (
        f"could not reach Kaggle at {kaggle_endpoint()} ({_connection_reason(error)}).\n"
        "  Check the network connection and proxy settings (HTTPS_PROXY), then rerun.\n"
        + manual_download_hint(competition, out)
    )


@contextlib.contextmanager
def explained(competition: str, out: Path, creds: Credentials):
    """Turn the client's HTTP and network errors into DownloadErrors that say what to do."""
    try:
        yield
    except requests.HTTPError as e:
        raise DownloadError(http_error_message(e, competition, creds)) from None
    except (requests.ConnectionError, requests.Timeout) as e:
        raise DownloadError(unreachable_message(e, competition, out)) from None


# ---------------------------------------------------------------- disk space


def check_space(folder: Path, needed: int, purpose: str) -> None:
    available = free_bytes(folder)
    if needed > available:
        raise DownloadError(
            f"not enough free disk space in {folder} to {purpose}: need {human_bytes(needed)} ({needed} bytes), "
            f"have {human_bytes(available)} ({available} bytes).\n"
            "  Free some space, or put the dataset on a disk with more room: add DATA=<a folder there> to the make\n"
            "  command (--out <a folder there> with python -m data.download)."
        )


# ---------------------------------------------------------------- download


def _interrupted_message(error: Exception, competition: str, zip_path: Path, size: int | None, out: Path) -> str:
    have = zip_path.stat().st_size if zip_path.exists() else 0
    of = f" of {size}" if size else ""
    if isinstance(error, requests.HTTPError) and error.response is not None:
        reason = f"HTTP {error.response.status_code}"
    else:  # requests' errors are OSErrors too, without a strerror
        reason = getattr(error, "strerror", None) or type(error).__name__
    return (
        f"the download of {competition} was interrupted after {have}{of} bytes ({reason}).\n"
        f"  The partial archive is kept in {zip_path.parent}; rerun the same command to resume it.\n"
        + manual_download_hint(competition, out)
    )


def download_archive(api, competition: str, staging: Path, out: Path, force: bool, retries: int) -> Path:
    """Fetch the competition zip into staging/, resuming a partial one; return its path.

    competition_download_files, spelled out, to check disk space once the size is known
    and to choose the number of retries.
    """
    from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFilesRequest

    zip_path = staging / f"{competition}.zip"
    with api.build_kaggle_client() as client:
        request = ApiDownloadDataFilesRequest()
        request.competition_name = competition
        response = client.competitions.competition_api_client.download_data_files(request)
        size = int(response.headers.get("Content-Length") or 0) or None
        if not force and not api.download_needed(response, str(zip_path), quiet=True):
            print(f"{zip_path} is already complete; not downloading it again")
            return zip_path
        if size:
            have = min(zip_path.stat().st_size, size) if zip_path.exists() else 0
            check_space(staging, int(size * SPACE_FACTOR) - have, f"download and unpack {competition}")
        staging.mkdir(parents=True, exist_ok=True)
        print(f"downloading {competition} into {staging}")
        try:
            # resume=True: the client appends only to a partial its .kaggle-partial marker vouches for.
            api.download_file(response, str(zip_path), client.http_client(), quiet=False, resume=True,
                              max_retries=retries)
        except (requests.RequestException, OSError, ValueError) as e:
            raise DownloadError(_interrupted_message(e, competition, zip_path, size, out)) from None
    return zip_path


# ---------------------------------------------------------------- unzip


def safe_members(archive: zipfile.ZipFile, zip_path: Path) -> list[zipfile.ZipInfo]:
    """Every entry, after refusing any that would land outside the target folder."""
    members = archive.infolist()
    for info in members:
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
            raise DownloadError(
                f"refusing to unpack {zip_path}: its entry '{info.filename}' would be written outside "
                "the target folder. This is not a genuine Kaggle archive; download it again."
            )
    return members


def unzip(zip_path: Path, dest: Path) -> None:
    """Unpack zip_path into dest, starting clean: a dest left behind is an interrupted unzip."""
    from tqdm import tqdm

    if dest.exists():
        print(f"removing {dest}, left by an interrupted unzip")
        shutil.rmtree(dest)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = safe_members(archive, zip_path)
            check_space(dest.parent, sum(m.file_size for m in members), f"unpack {zip_path.name}")
            dest.mkdir(parents=True)
            for member in tqdm(members, desc="unzipping", unit="file"):
                archive.extract(member, dest)
    except (zipfile.BadZipFile, EOFError) as e:
        raise DownloadError(
            f"{zip_path} is not a readable zip archive ({e}). Delete it and download it again."
        ) from None


def dataset_root(unpacked: Path) -> Path:
    """Kaggle's zip holds the layout at its top; a hand-made zip may wrap it in one folder."""
    if find_metadata(unpacked) is not None:
        return unpacked
    children = [p for p in unpacked.iterdir() if p.name != "__MACOSX"]
    if len(children) == 1 and children[0].is_dir() and find_metadata(children[0]) is not None:
        return children[0]
    return unpacked


# ---------------------------------------------------------------- validate and install


def validate(root: Path, source: Path) -> LayoutReport:
    """The layout report of the unpacked data; raises when it is not a usable dataset."""
    missing = missing_entries(root)
    if missing:
        raise DownloadError(
            f"{source} does not hold a BirdCLEF dataset in the Kaggle layout: missing {', '.join(missing)}. "
            "It is not the competition's whole-data zip (the data page's \"Download All\"), or it is incomplete: "
            "download it again."
        )
    try:
        report = validate_layout(root)
    except LayoutError as e:
        raise DownloadError(f"{source} does not hold a usable BirdCLEF dataset: {e}") from None
    if not report.ok:
        print(report.format(), file=sys.stderr)
        raise DownloadError(f"{source} unpacked, but the data is unusable: {problem(report)}.")
    return report


def problem(report: LayoutReport) -> str:
    """Why report.ok is False."""
    if report.rows_without_file:
        return f"{len(report.rows_without_file)} rows of {metadata_name(report)} have no file under train_audio/"
    return f"{metadata_name(report)} lists no file found under train_audio/"


def metadata_name(report: LayoutReport) -> str:
    found = find_metadata(report.data_dir)
    return found.name if found else "the metadata"


def install(root: Path, out: Path) -> None:
    """Put the validated folder at out in one rename, so out is never half there."""
    replaced = out.with_name(out.name + ".replaced")
    shutil.rmtree(replaced, ignore_errors=True)
    if out.exists():
        os.replace(out, replaced)
    os.replace(root, out)
    shutil.rmtree(replaced, ignore_errors=True)


def unpack_and_install(zip_path: Path, out: Path) -> LayoutReport:
    """zip -> <out>.unzipping -> validated -> out. On failure out is untouched and the temp folder gone."""
    tmp = out.with_name(out.name + ".unzipping")
    try:
        unzip(zip_path, tmp)
        root = dataset_root(tmp)
        report = validate(root, zip_path)
        install(root, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dataclasses.replace(report, data_dir=out)


def existing_dataset(out: Path, force_command: str) -> LayoutReport | None:
    """The report of the valid dataset already in out; None when out is absent or empty.
    force_command: the `make data` line that replaces it, for the message."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    if not out.is_dir():
        reason = "it is not a folder"
    else:
        try:
            report = validate_layout(out)
        except LayoutError as e:
            reason = str(e)
        else:
            if report.ok:
                return report
            reason = problem(report)
    raise DownloadError(
        f"{out} exists but does not hold a valid dataset ({reason}).\n"
        f"  Move it away, or rerun with --force to replace it; through make: {force_command}"
    )


def download(competition: str, out: Path, force: bool, retries: int, creds: Credentials) -> LayoutReport:
    staging = out.with_name(out.name + ".partial")
    with explained(competition, out, creds):
        api = kaggle_api(creds)
        zip_path = download_archive(api, competition, staging, out, force, retries)
    report = unpack_and_install(zip_path, out)
    shutil.rmtree(staging, ignore_errors=True)  # the zip is as big as the data; it served its purpose
    return report


# ---------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data.download",
        description="Download a BirdCLEF competition from Kaggle into --out, unpack it safely and check its "
        "layout. Credentials: ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/kaggle.json), "
        "KAGGLE_USERNAME + KAGGLE_KEY, or KAGGLE_API_TOKEN.",
    )
    add = parser.add_argument
    add("--competition", default="birdclef-2024",
        help="competition slug: a BirdCLEF year from 2023 on, 2021-2022 are refused (default: %(default)s)")
    add("--out", type=Path, help="dataset folder (default: data/<competition>)")
    add("--zip", type=Path, help="unpack this hand-downloaded archive instead (offline, no credentials needed)")
    add("--force", action="store_true", help="replace a valid dataset already in --out, downloading it again")
    add("--retries", type=int, default=5, help="retries of a dropped download before giving up (default: %(default)s)")
    return parser.parse_args(argv)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def run(args: argparse.Namespace, out: Path, secrets: list[str]) -> LayoutReport | None:
    """The stage itself; returns the report to print, or None when there was nothing to do."""
    refuse_unsupported(args.competition)
    if not args.force:
        again = "--force" if args.zip is None else f"--zip {args.zip} --force"
        force_command = make_data_command(args.competition, out, again)
        report = existing_dataset(out, force_command)
        if report is not None:
            what = "download it again" if args.zip is None else f"unpack {args.zip} over it"
            print(f"{out} already holds a valid dataset; nothing to do (to {what}, rerun with --force; "
                  f"through make: {force_command})")
            print(report.format())
            return None
    if args.zip is not None:
        if args.zip.is_dir():
            raise DownloadError(f"--zip {args.zip} is a folder, not a zip archive. An unpacked dataset needs no "
                                f"download: use it as DATA={args.zip} where it is in the Kaggle layout, or give "
                                "--zip the .zip file.")
        if not args.zip.is_file():
            raise DownloadError(f"--zip {args.zip}: no such file")
        return unpack_and_install(args.zip, out)
    creds = require_credentials()
    secrets.extend(creds.secrets())
    return download(args.competition, out, args.force, args.retries, creds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path("data") / args.competition
    secrets: list[str] = []
    try:
        report = run(args, out, secrets)
    except DownloadError as e:
        print(f"error: {redact(str(e), secrets)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: {out} is untouched; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception:
        # A bug, not a user error: keep the traceback, but never with the key in it.
        print(redact(traceback.format_exc(), secrets), end="", file=sys.stderr)
        return 1
    if report is not None:
        print(f"{args.competition} is ready in {out}" if args.zip is None else f"unpacked {args.zip} into {out}")
        print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
