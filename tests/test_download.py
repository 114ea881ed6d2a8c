"""`make data` (data.download), driven through the REAL kaggle client against tests/fake_kaggle.py.

Everything is offline: kagglesdk's TEST environment points the client at localhost:7777,
where the fake answers like Kaggle (and GCS behind its redirect) would.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data import download
from data.audio_io import write_ogg
from data.layout import METADATA_COLUMNS
from tests.fake_kaggle import (FakeKaggle, fake_credentials, import_kaggle_offline, port_is_free, port_lock,
                               serving)

COMPETITION = "birdclef-2024"
USERNAME = "tester"
FAKE_KEY = "fAkE-kEy-9c41d7e2-never-print-me"
FAKE_TOKEN = "KGAT_fake-token-5b8e0a13-never-print-me"
SECRETS = [FAKE_KEY, FAKE_TOKEN, base64.b64encode(f"{USERNAME}:{FAKE_KEY}".encode()).decode()]
SPECIES = ["asbfly", "ashdro1", "barswa"]
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- a tiny dataset in the Kaggle layout


def make_dataset(root: Path) -> None:
    """3 species x 2 one-second recordings at 32 kHz, plus one unlabeled 5-minute soundscape.

    The soundscape makes the archive span a few of the client's 1 MiB chunks, so that a dropped
    download leaves a partial file for the next run to resume.
    """
    rng = np.random.default_rng(0)
    rows = []
    for i, code in enumerate(SPECIES):
        for j in range(2):
            rel = f"{code}/XC{100000 + 10 * i + j}.ogg"
            write_ogg(root / "train_audio" / rel, 0.1 * rng.standard_normal(32_000), 32_000)
            rows.append([code, "[]", "['call']", "10.0", "76.0", f"Sci {code}", f"Bird {code}",
                         "Someone", "Creative Commons Attribution-NonCommercial-ShareAlike 4.0", "4.5",
                         f"https://www.xeno-canto.org/{100000 + 10 * i + j}", rel])
    (root / "train_metadata.csv").write_text(
        ",".join(METADATA_COLUMNS) + "\n" + "".join(",".join(f'"{v}"' for v in r) + "\n" for r in rows))
    (root / "sample_submission.csv").write_text(
        "row_id," + ",".join(SPECIES) + "\n" + "".join(f"soundscape_0_{t}," + ",".join(["0.0"] * 3) + "\n"
                                                       for t in (5, 10)))
    (root / "eBird_Taxonomy_v2021.csv").write_text(
        "TAXON_ORDER,CATEGORY,SPECIES_CODE,PRIMARY_COM_NAME,SCI_NAME\n"
        + "".join(f"{n},species,{c},Bird {c},Sci {c}\n" for n, c in enumerate(SPECIES)))
    write_ogg(root / "unlabeled_soundscapes" / "460830.ogg", 0.05 * rng.standard_normal(300 * 32_000), 32_000)
    (root / "test_soundscapes").mkdir()


def zip_folder(root: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """Zip root the way Kaggle does: the layout at the top, folders as entries too."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_dir():
                archive.writestr(rel + "/", b"")
            else:
                archive.write(path, rel)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under root: file -> its bytes, folder -> None."""
    return {p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("source") / COMPETITION
    make_dataset(root)
    return root


@pytest.fixture(scope="module")
def archive(dataset) -> bytes:
    return zip_folder(dataset)


@pytest.fixture(scope="module", autouse=True)
def kaggle_imported(tmp_path_factory):
    import_kaggle_offline(tmp_path_factory.mktemp("import-home"), USERNAME, FAKE_KEY)


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """Fake credentials in the environment, HOME and the kaggle config in tmp; returns the work folder."""
    return fake_credentials(monkeypatch, tmp_path, USERNAME, FAKE_KEY)


@pytest.fixture
def fake(archive) -> FakeKaggle:
    fake = FakeKaggle(archives={COMPETITION: archive}, username=USERNAME, key=FAKE_KEY, token=FAKE_TOKEN)
    with serving(fake):
        yield fake


def run(out: Path, *extra: str) -> int:
    return download.main(["--competition", COMPETITION, "--out", str(out), *extra])


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def assert_no_secret_in_files(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, path


def error_in(stderr: str) -> str:
    """stderr from the error on: what comes before is progress bars."""
    return stderr[stderr.index("error: "):]


def report_lines(out: Path) -> str:
    return (
        f"dataset            {out}\n"
        "species            3\n"
        "recordings         6\n"
        "total audio        0.00 h\n"
        "unlabeled scapes   1\n"
        "test soundscapes   0\n"
        "unreadable files   0\n"
        "rows without file  0\n"
        "files without row  0\n"
    )


MISSING_CREDENTIALS = (
    "error: no Kaggle API credentials found.\n"
    '  Create a token at https://www.kaggle.com/settings/api ("Create New Token"), save the downloaded kaggle.json as\n'
    "  {config} and run `chmod 600 {config}`,\n"
    "  or export KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN) in this shell. Then rerun.\n"
)


def manual_hint(out: Path) -> str:
    return (
        f'  Or download the zip by hand from https://www.kaggle.com/competitions/{COMPETITION}/data ("Download All"),\n'
        f'  then run: make data DATA={out} DATA_ARGS="--zip path/to/{COMPETITION}.zip"\n'
        f"  (or .venv/bin/python -m data.download --zip path/to/{COMPETITION}.zip --out {out})\n"
    )


# ---------------------------------------------------------------- downloading


def test_a_download_unpacks_validates_installs_and_prints_the_report(env, fake, dataset, capsys):
    out = env / COMPETITION

    assert run(out) == 0

    stdout = capsys.readouterr().out
    assert stdout.endswith(f"{COMPETITION} is ready in {out}\n" + report_lines(out))
    assert tree(out) == tree(dataset)
    assert sorted(p.name for p in env.iterdir()) == [COMPETITION]  # no staging, no temp folder left
    [call] = fake.calls("DownloadDataFiles")
    assert call["competition"] == COMPETITION
    assert call["auth"] == "Basic " + base64.b64encode(f"{USERNAME}:{FAKE_KEY}".encode()).decode()


def test_credentials_are_read_from_kaggle_json_in_kaggle_config_dir(env, fake, dataset, monkeypatch, capsys):
    kaggle_json = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    kaggle_json.parent.mkdir()
    kaggle_json.write_text(f'{{"username": "{USERNAME}", "key": "{FAKE_KEY}"}}')
    kaggle_json.chmod(0o600)
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")

    assert run(env / COMPETITION) == 0

    assert tree(env / COMPETITION) == tree(dataset)
    assert "readable by other users" not in capsys.readouterr().err


def test_a_kaggle_json_readable_by_others_draws_a_chmod_warning(env, fake, monkeypatch, capsys):
    kaggle_json = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    kaggle_json.parent.mkdir()
    kaggle_json.write_text(f'{{"username": "{USERNAME}", "key": "{FAKE_KEY}"}}')
    kaggle_json.chmod(0o644)
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")

    assert run(env / COMPETITION) == 0

    err = capsys.readouterr().err
    assert err.count(f"warning: {kaggle_json} is readable by other users; run `chmod 600 {kaggle_json}`\n") == 1


def test_a_kaggle_api_token_is_accepted_and_sent_as_a_bearer_token(env, fake, dataset, monkeypatch, capfd):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", FAKE_TOKEN)

    assert run(env / COMPETITION) == 0

    assert tree(env / COMPETITION) == tree(dataset)
    assert len(fake.calls("introspect")) == 1
    assert fake.calls("DownloadDataFiles")[0]["auth"] == f"Bearer {FAKE_TOKEN}"
    captured = capfd.readouterr()
    assert_no_secret(captured.out + captured.err)


def test_an_inactive_api_token_says_to_create_a_new_one(env, fake, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_revoked-long-ago")

    assert run(env / COMPETITION) == 1

    assert capsys.readouterr().err == (
        "error: Kaggle did not accept the credentials from KAGGLE_API_TOKEN (inactive or expired token).\n"
        '  Create a new token at https://www.kaggle.com/settings/api ("Create New Token"), '
        "put it in place of KAGGLE_API_TOKEN, and rerun.\n"
    )
    assert fake.calls("DownloadDataFiles") == []


def test_missing_credentials_print_how_to_get_a_token_and_write_nothing(env, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    config = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"

    assert run(env / COMPETITION) == 1

    captured = capsys.readouterr()
    assert captured.err == MISSING_CREDENTIALS.format(config=config)
    assert captured.out == ""
    assert list(env.iterdir()) == []


def test_without_kaggle_config_dir_the_message_names_the_documented_home_path(env, monkeypatch, capsys):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name)

    assert run(env / COMPETITION) == 1

    config = Path(os.environ["HOME"]) / ".kaggle" / "kaggle.json"
    assert capsys.readouterr().err == MISSING_CREDENTIALS.format(config=config)


@pytest.mark.parametrize("content, problem", [
    ('{"username": "tester", key: }', "is not valid JSON (Expecting property name enclosed in double quotes: "
                                      "line 1 column 24 (char 23))"),
    (f'{{"username": "tester", "key": {FAKE_KEY}}}', "is not valid JSON (Expecting value: line 1 column 31 (char 30))"),
    ("", "is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ('{"username": "tester"}', 'lacks "key"'),
    (f'{{"key": "{FAKE_KEY}"}}', 'lacks "username"'),
    (f'["tester", "{FAKE_KEY}"]', 'lacks "username" and "key"'),
], ids=["unquoted name", "unquoted key", "empty", "no key", "no username", "a list"])
def test_a_malformed_kaggle_json_says_what_is_wrong_with_it_and_to_replace_it(env, monkeypatch, capsys, content,
                                                                               problem):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    config = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    config.parent.mkdir()
    config.write_text(content)
    config.chmod(0o600)

    assert run(env / COMPETITION) == 1

    captured = capsys.readouterr()
    assert captured.err == (
        f"error: {config} {problem}, so it holds no usable Kaggle API credentials.\n"
        '  Create a new token at https://www.kaggle.com/settings/api ("Create New Token"), save the downloaded '
        "kaggle.json in its\n"
        f"  place and run `chmod 600 {config}`. Then rerun.\n"
    )
    assert captured.out == ""
    assert_no_secret(captured.err)
    assert list(env.iterdir()) == []


def test_a_kaggle_json_lacking_only_what_the_environment_gives_is_not_blamed_for_it(env, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_KEY")  # KAGGLE_USERNAME stays: kaggle.json needs only the key
    config = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    config.parent.mkdir()
    config.write_text('{"user": "tester"}')
    config.chmod(0o600)

    assert run(env / COMPETITION) == 1

    assert capsys.readouterr().err.startswith(f'error: {config} lacks "key", so it holds no usable')


def test_unaccepted_rules_say_to_accept_them_on_the_rules_page(env, fake, capsys):
    fake.fail_with = 403

    assert run(env / COMPETITION) == 1

    captured = capsys.readouterr()
    assert captured.err == (
        f"error: Kaggle refused the {COMPETITION} data (HTTP 403: You must accept this competition's rules "
        "before you'll be able to download files.).\n"
        f"  This account has not accepted the competition rules yet: open "
        f"https://www.kaggle.com/competitions/{COMPETITION}/rules,\n"
        '  sign in, click "I Understand and Accept" (a finished competition offers "Join Competition" or\n'
        '  "Late Submission" instead), then rerun.\n'
    )
    assert list(env.iterdir()) == []


def test_a_403_that_does_not_name_the_rules_lists_the_usual_causes(env, fake, capsys):
    fake.fail_with = 403
    fake.forbidden_message = "Permission 'competitions.get' was denied"

    assert run(env / COMPETITION) == 1

    assert capsys.readouterr().err == (
        f"error: Kaggle refused the {COMPETITION} data (HTTP 403: Permission 'competitions.get' was denied).\n"
        f"  Accept the competition rules at https://www.kaggle.com/competitions/{COMPETITION}/rules if this "
        "account has not, check that it is\n"
        f"  phone-verified (https://www.kaggle.com/settings/api) and that '{COMPETITION}' is the competition's "
        "slug, then rerun.\n")


def test_rejected_credentials_say_to_create_a_new_token(env, fake, capsys):
    fake.fail_with = 401

    assert run(env / COMPETITION) == 1

    assert capsys.readouterr().err == (
        "error: Kaggle rejected the credentials from KAGGLE_USERNAME/KAGGLE_KEY (HTTP 401: Unauthenticated).\n"
        '  The token is mistyped, expired or was revoked: create a new one at https://www.kaggle.com/settings/api '
        '("Create New Token"),\n'
        "  put it in place of KAGGLE_USERNAME/KAGGLE_KEY, and rerun.\n"
    )
    assert list(env.iterdir()) == []


@pytest.mark.parametrize("competition", ["birdclef-1999", "birdclef-2026"])  # a typo; a year the kit does not know yet
def test_an_unknown_competition_is_asked_of_kaggle_which_says_to_check_the_slug(env, fake, capsys, competition):
    assert download.main(["--competition", competition, "--out", str(env / "x")]) == 1

    assert capsys.readouterr().err == (
        f"error: Kaggle has no competition named '{competition}' (HTTP 404: Competition not found).\n"
        "  Check the slug (COMPETITION= with make, --competition with python -m data.download): BirdCLEF\n"
        "  slugs look like birdclef-2024 or birdclef-2025.\n"
    )


@pytest.mark.parametrize("competition", ["birdclef-2021", "birdclef-2022"])
def test_a_long_table_year_is_refused_before_anything_is_asked_of_kaggle(env, fake, capsys, competition):
    assert download.main(["--competition", competition, "--out", str(env / competition)]) == 1

    assert capsys.readouterr().err == (
        f"error: the kit does not support {competition}: BirdCLEF 2021-2022 scored a long table (row_id + the "
        "species heard), and the kit writes one probability column per class,\n"
        "  the format of BirdCLEF 2023-2025.\n"
        "  Choose one of birdclef-2023, birdclef-2024, birdclef-2025: make data COMPETITION=birdclef-2025\n"
        "  (--competition birdclef-2025 with python -m data.download).\n"
    )
    assert fake.requests == []
    assert list(env.iterdir()) == []


def test_an_unreachable_kaggle_says_to_check_the_network_or_use_zip(env, capsys):
    out = env / COMPETITION
    with port_lock():  # nothing of ours listens on 7777 meanwhile
        if not port_is_free():
            pytest.skip("port 7777 is busy: cannot arrange for nothing to listen there")
        assert run(out) == 1

    assert capsys.readouterr().err == (
        "error: could not reach Kaggle at http://localhost:7777 (connection refused).\n"
        "  Check the network connection and proxy settings (HTTPS_PROXY), then rerun.\n" + manual_hint(out)
    )
    assert list(env.iterdir()) == []


def test_a_dropped_download_resumes_on_rerun_and_equals_an_uninterrupted_one(env, fake, archive, dataset, capsys):
    assert len(archive) > 2 * 2**20
    fake.drop_after = len(archive) * 3 // 4
    out = env / COMPETITION
    partial = env / f"{COMPETITION}.partial" / f"{COMPETITION}.zip"

    assert run(out, "--retries", "0") == 1

    # The client writes whole chunks, so the partial file ends at a chunk boundary before the drop.
    kept = partial.read_bytes()
    assert 0 < len(kept) < len(archive) * 3 // 4 and kept == archive[: len(kept)]
    assert error_in(capsys.readouterr().err) == (
        f"error: the download of {COMPETITION} was interrupted after {len(kept)} of {len(archive)} bytes "
        "(ChunkedEncodingError).\n"
        f"  The partial archive is kept in {partial.parent}; rerun the same command to resume it.\n"
        + manual_hint(out)
    )
    assert not out.exists()

    assert run(out, "--retries", "0") == 0

    assert [c["range"] for c in fake.calls("archive")] == [None, None, f"bytes={len(kept)}-"]
    assert tree(out) == tree(dataset)
    assert run(env / "uninterrupted") == 0
    assert tree(out) == tree(env / "uninterrupted")
    assert not partial.parent.exists()


def test_too_little_disk_space_names_the_bytes_needed_and_available(env, fake, archive, monkeypatch, capsys):
    monkeypatch.setattr(download, "free_bytes", lambda path: 1000)

    assert run(env / COMPETITION) == 1

    needed = int(len(archive) * 2.2)
    assert capsys.readouterr().err == (
        f"error: not enough free disk space in {env / (COMPETITION + '.partial')} to download and unpack "
        f"{COMPETITION}: need {needed / 1e6:.1f} MB ({needed} bytes), have 1.0 KB (1000 bytes).\n"
        "  Free some space, or put the dataset on a disk with more room: add DATA=<a folder there> to the make\n"
        "  command (--out <a folder there> with python -m data.download).\n"
    )
    assert fake.calls("archive")[0]["range"] is None  # asked, then stopped before streaming the body
    assert not (env / COMPETITION).exists()


def test_an_already_present_dataset_is_not_downloaded_again(env, fake, capsys):
    out = env / COMPETITION
    assert run(out) == 0
    capsys.readouterr()
    asked = len(fake.requests)

    assert run(out) == 0

    assert capsys.readouterr().out.startswith(
        f"{out} already holds a valid dataset; nothing to do (to download it again, rerun with --force; through "
        f"make: make data DATA={out} DATA_ARGS=--force)\n"
        + report_lines(out)
    )
    assert len(fake.requests) == asked


def test_force_downloads_again_and_replaces_the_dataset(env, fake, dataset):
    out = env / COMPETITION
    assert run(out) == 0
    (out / "stray.txt").write_text("from before")

    assert run(out, "--force") == 0

    assert len(fake.calls("DownloadDataFiles")) == 2
    assert tree(out) == tree(dataset)
    assert sorted(p.name for p in env.iterdir()) == [COMPETITION]


def test_an_out_folder_holding_something_else_is_left_alone_without_force(env, capsys):
    out = env / COMPETITION
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    assert run(out) == 1

    assert capsys.readouterr().err == (
        f"error: {out} exists but does not hold a valid dataset (DATA={out} is not in the Kaggle BirdCLEF layout: "
        "it lacks train_audio, train_metadata.csv or train.csv, sample_submission.csv. Point DATA at the folder that "
        "holds them, restore what is missing from the competition's zip (make data DATA=... DATA_ARGS=--force "
        "downloads it again), or run `make sample` for the embedded sample.).\n"
        f"  Move it away, or rerun with --force to replace it; through make: make data DATA={out} DATA_ARGS=--force\n"
    )
    assert tree(out) == {"notes.txt": b"mine"}


@pytest.mark.parametrize("competition, out, zip_name, command", [
    ("birdclef-2024", "data/birdclef-2024", None, "make data DATA_ARGS=--force"),
    ("birdclef-2025", "data/birdclef-2025", None, "make data COMPETITION=birdclef-2025 DATA_ARGS=--force"),
    ("birdclef-2025", "elsewhere/birdclef-2025", None, "make data DATA=elsewhere/birdclef-2025 DATA_ARGS=--force"),
    ("birdclef-2025", "mine", None, "make data COMPETITION=birdclef-2025 DATA=mine DATA_ARGS=--force"),
    ("birdclef-2024", "mine", "b.zip", 'make data DATA=mine DATA_ARGS="--zip b.zip --force"'),
], ids=["the default", "another year", "a folder named after it elsewhere", "any other folder", "a zip"])
def test_the_make_command_that_replaces_a_folder_reruns_the_same_download_with_force(env, monkeypatch, capsys,
                                                                                     competition, out, zip_name,
                                                                                     command):
    monkeypatch.chdir(env)
    Path(out).mkdir(parents=True)
    (Path(out) / "notes.txt").write_text("mine")

    args = ["--competition", competition, "--out", out] + (["--zip", zip_name] if zip_name else [])
    assert download.main(args) == 1

    assert capsys.readouterr().err.endswith(
        f"  Move it away, or rerun with --force to replace it; through make: {command}\n")
    # What make runs for that line (the user's shell's COMPETITION and DATA aside): this same download, with --force.
    shell = {k: v for k, v in os.environ.items() if k not in ("COMPETITION", "DATA")}
    dry = subprocess.run([*shlex.split(command), "-n", "VENV=.venv"], cwd=REPO, capture_output=True, text=True,
                         check=True, env=shell).stdout
    assert "-m data.download " + " ".join([*args, "--force"]) + "\n" in dry


@pytest.mark.parametrize("scenario", ["ok", "401", "403", "dropped"])
def test_the_key_is_never_printed_logged_nor_written(env, fake, scenario, monkeypatch, capfd, caplog):
    from kaggle.api.kaggle_api_extended import KaggleApi

    # What `import kaggle` under VERBOSE=1 sets up: a client that prints every request's headers.
    monkeypatch.setattr(KaggleApi, "args", ["--verbose"])
    caplog.set_level(logging.DEBUG)
    fake.fail_with = {"401": 401, "403": 403}.get(scenario)
    fake.drop_after = 2**20 + 100 if scenario == "dropped" else None

    assert run(env / COMPETITION, "--retries", "0") == (0 if scenario == "ok" else 1)

    captured = capfd.readouterr()
    assert_no_secret(captured.out + captured.err + caplog.text)
    assert_no_secret_in_files(env)


def test_an_unexpected_failure_keeps_its_traceback_but_not_the_key(env, fake, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError(f"boom near {FAKE_KEY}")

    monkeypatch.setattr(download, "download_archive", broken)

    assert run(env / COMPETITION) == 1

    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert err.endswith("RuntimeError: boom near ***\n")
    assert_no_secret(err)


@pytest.mark.parametrize("text, reason", [
    ("HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded (Caused by NameResolutionError("
     "\"Failed to resolve 'api.kaggle.com' ([Errno -2] Name or service not known)\"))", "DNS lookup failed"),
    ("HTTPConnectionPool(host='localhost', port=7777): ... [Errno 111] Connection refused'))", "connection refused"),
    ("HTTPSConnectionPool(host='api.kaggle.com', port=443): Read timed out. (read timeout=300)", "timed out"),
])
def test_network_failures_are_named_in_plain_words(text, reason):
    import requests

    assert download._connection_reason(requests.ConnectionError(text)) == reason


# ---------------------------------------------------------------- unpacking


def test_zip_installs_a_hand_downloaded_archive_without_credentials_or_network(env, archive, dataset, monkeypatch,
                                                                              capsys):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")  # port 80: nothing should be asked there
    manual = env / "downloads" / f"{COMPETITION}.zip"
    manual.parent.mkdir()
    manual.write_bytes(archive)
    out = env / COMPETITION

    assert download.main(["--zip", str(manual), "--out", str(out)]) == 0

    assert capsys.readouterr().out.endswith(f"unpacked {manual} into {out}\n" + report_lines(out))
    assert tree(out) == tree(dataset)
    assert manual.read_bytes() == archive  # the user's download is kept


def test_a_zip_wrapping_the_layout_in_one_folder_is_unwrapped(env, dataset, tmp_path):
    wrapper = tmp_path / "wrapped"
    (wrapper / COMPETITION).mkdir(parents=True)
    manual = env / "wrapped.zip"
    buffer = io.BytesIO(zip_folder(dataset))
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(manual, "w") as dst:
        for info in src.infolist():
            dst.writestr(f"{COMPETITION}/{info.filename}", src.read(info))

    assert download.main(["--zip", str(manual), "--out", str(env / "data")]) == 0

    assert tree(env / "data") == tree(dataset)


def test_a_birdclef_2025_zip_with_train_csv_is_unwrapped_validated_and_installed(env, tmp_path, capsys):
    source = tmp_path / "birdclef-2025"
    make_dataset(source)
    (source / "train_metadata.csv").rename(source / "train.csv")  # 2025's name for the metadata
    manual = env / "birdclef-2025.zip"
    with zipfile.ZipFile(manual, "w") as dst:  # wrapped in one folder, as a hand-made zip may be
        for path in sorted(source.rglob("*")):
            if path.is_file():
                dst.write(path, f"birdclef-2025/{path.relative_to(source).as_posix()}")
    out = env / "birdclef-2025"

    assert download.main(["--zip", str(manual), "--out", str(out)]) == 0

    assert capsys.readouterr().out.endswith(report_lines(out))
    assert (out / "train.csv").read_bytes() == (source / "train.csv").read_bytes()


def test_an_interrupted_unzip_is_wiped_and_redone(env, archive, dataset, capsys):
    out = env / COMPETITION
    leftover = env / f"{COMPETITION}.unzipping"
    (leftover / "train_audio" / "asbfly").mkdir(parents=True)
    (leftover / "train_audio" / "asbfly" / "XC100000.ogg").write_bytes(b"OggS half a file")
    (leftover / "junk.tmp").write_bytes(b"junk")
    manual = env / "manual.zip"
    manual.write_bytes(archive)

    assert download.main(["--zip", str(manual), "--out", str(out)]) == 0

    assert f"removing {leftover}, left by an interrupted unzip\n" in capsys.readouterr().out
    assert tree(out) == tree(dataset)
    assert not leftover.exists()


def test_a_rerun_after_an_interrupted_unzip_reuses_the_downloaded_zip(env, fake, dataset, monkeypatch, capsys):
    out = env / COMPETITION
    real_validate = download.validate

    def ctrl_c(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "validate", ctrl_c)
    assert run(out) == 130
    assert capsys.readouterr().err.endswith(f"\ninterrupted: {out} is untouched; rerun the same command to resume\n")
    assert not out.exists()
    leftover = env / f"{COMPETITION}.unzipping"
    (leftover / "train_audio").mkdir(parents=True)  # as a kill -9 mid-unzip would leave it
    monkeypatch.setattr(download, "validate", real_validate)

    assert run(out) == 0

    stdout = capsys.readouterr().out
    zip_path = env / f"{COMPETITION}.partial" / f"{COMPETITION}.zip"
    assert f"{zip_path} is already complete; not downloading it again\n" in stdout
    assert f"removing {leftover}, left by an interrupted unzip\n" in stdout
    assert tree(out) == tree(dataset)
    assert sorted(p.name for p in env.iterdir()) == [COMPETITION]


def test_a_zip_with_a_path_traversal_entry_is_refused(env, dataset, capsys):
    evil = env / "evil.zip"
    evil.write_bytes(zip_folder(dataset, extra={"../evil": b"pwned"}))
    out = env / "sub" / COMPETITION

    assert download.main(["--zip", str(evil), "--out", str(out)]) == 1

    assert capsys.readouterr().err == (
        f"error: refusing to unpack {evil}: its entry '../evil' would be written outside the target folder. "
        "This is not a genuine Kaggle archive; download it again.\n"
    )
    assert not (env / "evil").exists() and not (env / "sub" / "evil").exists()
    assert not out.exists() and not (env / "sub" / f"{COMPETITION}.unzipping").exists()


def test_a_zip_that_is_not_a_birdclef_dataset_is_not_installed(env, tmp_path, capsys):
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "images" / "a.png").write_bytes(b"png")
    manual = env / "other.zip"
    manual.write_bytes(zip_folder(other))
    out = env / COMPETITION

    assert download.main(["--zip", str(manual), "--out", str(out)]) == 1

    assert error_in(capsys.readouterr().err) == (
        f"error: {manual} does not hold a BirdCLEF dataset in the Kaggle layout: missing train_audio, "
        "train_metadata.csv or train.csv, sample_submission.csv. It is not the competition's whole-data zip (the "
        "data page's \"Download All\"), or it is incomplete: download it again.\n"
    )
    assert sorted(p.name for p in env.iterdir()) == ["other.zip"]


def test_a_truncated_zip_is_reported_as_unreadable(env, archive, capsys):
    manual = env / "cut.zip"
    manual.write_bytes(archive[: len(archive) // 2])

    assert download.main(["--zip", str(manual), "--out", str(env / COMPETITION)]) == 1

    assert capsys.readouterr().err == (
        f"error: {manual} is not a readable zip archive (File is not a zip file). Delete it and download it again.\n"
    )
    assert sorted(p.name for p in env.iterdir()) == ["cut.zip"]


def test_a_zip_path_that_does_not_exist_is_named(env, capsys):
    assert download.main(["--zip", str(env / "nope.zip"), "--out", str(env / COMPETITION)]) == 1

    assert capsys.readouterr().err == f"error: --zip {env / 'nope.zip'}: no such file\n"


def test_an_unpacked_dataset_given_as_the_zip_is_told_to_be_used_as_data(env, capsys):
    unpacked = env / "birdclef-2024-unpacked"
    unpacked.mkdir()

    assert download.main(["--zip", str(unpacked), "--out", str(env / COMPETITION)]) == 1

    assert capsys.readouterr().err == (
        f"error: --zip {unpacked} is a folder, not a zip archive. An unpacked dataset needs no download: use it as "
        f"DATA={unpacked} where it is in the Kaggle layout, or give --zip the .zip file.\n"
    )
    assert not (env / COMPETITION).exists()


# ---------------------------------------------------------------- the command line


def test_the_command_line_has_help_naming_every_option():
    result = subprocess.run([sys.executable, "-m", "data.download", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0
    for option in ("--competition", "--out", "--zip", "--force", "--retries"):
        assert option in result.stdout


def test_kaggle_username_and_key_in_the_environment_win_over_kaggle_json(tmp_path, monkeypatch):
    from data.download import find_credentials

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "kaggle.json").write_text('{"username": "fileuser", "key": "filekey"}')
    (tmp_path / "cfg" / "kaggle.json").chmod(0o600)
    monkeypatch.setenv("KAGGLE_USERNAME", "envuser")
    monkeypatch.setenv("KAGGLE_KEY", "envkey")
    creds = find_credentials()  # the kaggle client sends the environment's: those are the ones to name and hide
    assert (creds.username, creds.secret, creds.source) == ("envuser", "envkey", "KAGGLE_USERNAME/KAGGLE_KEY")
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    creds = find_credentials()
    assert (creds.username, creds.secret, creds.source) == ("fileuser", "filekey", str(tmp_path / "cfg" / "kaggle.json"))


def test_a_zip_made_on_a_mac_wrapping_the_layout_in_one_folder_beside_macosx_is_unwrapped(env, dataset, tmp_path):
    from data import download

    manual = env / "mac.zip"
    with zipfile.ZipFile(io.BytesIO(zip_folder(dataset))) as src, zipfile.ZipFile(manual, "w") as dst:
        for info in src.infolist():
            dst.writestr(f"{COMPETITION}/{info.filename}", src.read(info))
        dst.writestr(f"__MACOSX/{COMPETITION}/._train_metadata.csv", b"\x00\x05\x16\x07")  # Finder's resource forks

    assert download.main(["--zip", str(manual), "--out", str(env / "data")]) == 0

    assert tree(env / "data") == tree(dataset)


def test_resuming_a_download_needs_free_space_only_for_what_is_still_to_come(env, fake, archive, dataset,
                                                                             monkeypatch, capsys):
    from data import download

    fake.drop_after = len(archive) * 3 // 4
    out = env / COMPETITION
    partial = env / f"{COMPETITION}.partial" / f"{COMPETITION}.zip"
    assert run(out, "--retries", "0") == 1
    kept = partial.stat().st_size
    assert 0 < kept < len(archive)
    # Room for the rest of the zip and its contents, not for the whole zip again.
    monkeypatch.setattr(download, "free_bytes", lambda path: int(len(archive) * download.SPACE_FACTOR) - kept + 1)

    assert run(out, "--retries", "0") == 0, capsys.readouterr().err

    assert tree(out) == tree(dataset)
