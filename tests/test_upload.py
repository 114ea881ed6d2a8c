"""`make upload` (submission.upload), driven through the REAL kaggle client against tests/fake_kaggle.py.

Offline: kagglesdk's TEST environment points the client at localhost:7777, where the fake answers
the calls KaggleApi.dataset_create_new / dataset_create_version / dataset_status / kernels_push make
(and takes the PUT of each file, as Google Cloud Storage would behind Kaggle's signed upload URL).
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from submission import package, upload
from tests.fake_kaggle import (FakeKaggle, fake_credentials, import_kaggle_offline, port_is_free, port_lock,
                               serving)
from tests.test_wheels import seeded_cache, tiny_onnx

USERNAME = "tester"
FAKE_KEY = "fAkE-kEy-7d2f90b1-never-print-me"
FAKE_TOKEN = "KGAT_fake-token-41c6e8a5-never-print-me"
BASIC = base64.b64encode(f"{USERNAME}:{FAKE_KEY}".encode()).decode()
SECRETS = [FAKE_KEY, FAKE_TOKEN, BASIC]
DATASET = f"{USERNAME}/birdclef-kit-model"
KERNEL = f"{USERNAME}/birdclef-kit-submission"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def kaggle_imported(tmp_path_factory):
    import_kaggle_offline(tmp_path_factory.mktemp("import-home"), USERNAME, FAKE_KEY)


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """Fake credentials, HOME, the kaggle config and the client's temp files in tmp; returns the work folder."""
    work = fake_credentials(monkeypatch, tmp_path, USERNAME, FAKE_KEY)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # upload state, zipped folders
    return work


def make_dist(work: Path, denoise: str = "none") -> Path:
    """`make package` of a tiny model, with (stand-in) wheels from a seeded cache."""
    out = work / "dist"
    package.package(package.PackageConfig([tiny_onnx(work / "model.onnx", denoise)], out,
                                          wheel_cache=seeded_cache(work / "wheel-cache")))
    return out


@pytest.fixture
def dist(env) -> Path:
    return make_dist(env)


@pytest.fixture
def fake() -> FakeKaggle:
    fake = FakeKaggle(archives={}, username=USERNAME, key=FAKE_KEY, token=FAKE_TOKEN)
    with serving(fake):
        yield fake


def run(dist: Path, *extra: str) -> int:
    return upload.main(["--dist", str(dist), "--poll-s", "0", *extra])


def error_in(stderr: str) -> str:
    """stderr from the error on: what comes before is the client's upload progress bars."""
    return stderr[stderr.index("error: "):]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unzipped(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def assert_no_secret_in_files(*roots: Path) -> None:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in SECRETS:
                    assert secret.encode() not in data, path


# ---------------------------------------------------------------- uploading


def test_a_first_upload_creates_the_dataset_then_pushes_the_notebook(dist, fake, capsys):
    assert run(dist) == 0

    rpcs = [r["what"] for r in fake.requests if r["what"] != "PUT"]
    assert rpcs[0] == "GetDatasetStatus" and rpcs[-3:] == ["GetDatasetStatus", "GetDataset", "SaveKernel"]
    assert rpcs.count("CreateDataset") == 1 and "CreateDatasetVersion" not in rpcs
    # The files: as packaged; the folders as zips, which Kaggle unpacks into code/ and wheels/.
    [version] = fake.datasets[DATASET]
    files = version["files"]
    assert sorted(files) == ["birdkit.json", "code.zip", "model.onnx", "wheels.zip"]
    assert files["birdkit.json"] == (dist / "dataset" / "birdkit.json").read_bytes()
    assert files["model.onnx"] == (dist / "dataset" / "model.onnx").read_bytes()
    assert unzipped(files["code.zip"]) == tree(dist / "dataset" / "code")
    manifest = json.loads(files["birdkit.json"])
    assert unzipped(files["wheels.zip"]) == tree(dist / "dataset" / "wheels")
    assert sorted(unzipped(files["wheels.zip"])) == sorted(manifest["wheels"]["files"])
    create = version["request"]
    assert (create["ownerSlug"], create["slug"], create["title"]) == (USERNAME, "birdclef-kit-model", "birdclef kit model")
    assert create["licenseName"] == "CC0-1.0" and create["isPrivate"] is True
    # The notebook: competition and dataset attached, GPU and internet off.
    [kernel] = fake.kernels
    assert kernel["slug"] == KERNEL and kernel["newTitle"] == "birdclef kit submission"
    assert kernel["competitionDataSources"] == ["birdclef-2024"]
    assert kernel["datasetDataSources"] == [DATASET]
    assert kernel["enableGpu"] is False and kernel["enableInternet"] is False and kernel["enableTpu"] is False
    assert kernel["isPrivate"] is True and kernel["kernelType"] == "notebook" and kernel["language"] == "python"
    notebook = json.loads(next((dist / "notebook").glob("*.ipynb")).read_text())
    assert [c["source"] for c in json.loads(kernel["text"])["cells"]] == ["".join(c["source"]) for c in notebook["cells"]]
    # Kaggle's API sees the key; the storage URLs the files go to never do.
    assert {r["auth"] for r in fake.requests if r["what"] != "PUT"} == {f"Basic {BASIC}"}
    assert {r["auth"] for r in fake.requests if r["what"] == "PUT"} == {None}
    out = capsys.readouterr().out
    assert f"upload: dataset {DATASET} does not exist yet: creating it (private)\n" in out
    assert f"upload: dataset {DATASET} is ready (version 1)\n" in out
    assert out.endswith(f"upload: notebook pushed (version 1): {fake.url}/code/{KERNEL}\n"
                        "upload: Kaggle runs it now; when it has finished, submit it to the competition from its page\n")


def test_public_creates_the_dataset_public_and_the_notebook_stays_private(dist, fake, capsys):
    assert run(dist, "--public") == 0
    [version] = fake.datasets[DATASET]
    assert version["request"].get("isPrivate", False) is False  # proto3 JSON leaves a false field out: false
    assert "creating it (public)" in capsys.readouterr().out
    [kernel] = fake.kernels
    assert kernel["isPrivate"] is True  # --public is about the dataset: the notebook is pushed private either way


def test_the_next_upload_is_a_new_version_with_the_message(dist, fake, capsys):
    assert run(dist) == 0
    assert run(dist, "--message", "resnet18, 40 epochs") == 0

    first, second = fake.datasets[DATASET]
    assert second["request"]["ownerSlug"] == USERNAME and second["request"]["datasetSlug"] == "birdclef-kit-model"
    assert second["request"]["body"]["versionNotes"] == "resnet18, 40 epochs"
    assert second["files"] == first["files"]
    assert len(fake.kernels) == 2
    assert f"upload: dataset {DATASET} exists: uploading a new version ('resnet18, 40 epochs')\n" in \
        capsys.readouterr().out


def test_the_default_version_notes_name_the_model_and_its_score(dist, fake):
    assert run(dist) == 0 and run(dist) == 0
    notes = fake.datasets[DATASET][1]["request"]["body"]["versionNotes"]
    assert notes == "birdclef kit: simple_cnn, val ROC-AUC 0.7500, features v" + str(
        json.loads((dist / "dataset" / "birdkit.json").read_text())["features_version"])


def test_the_notebook_is_pushed_only_once_kaggle_has_processed_the_dataset(dist, fake, capsys):
    fake.statuses = ["BLOBS_RECEIVED", "BLOBS_RECEIVED", "BLOBS_DECOMPRESSED"]

    assert run(dist) == 0

    after_create = [r for r in fake.requests if r["what"] in ("GetDatasetStatus", "SaveKernel")][2:]
    assert [r["what"] for r in after_create] == ["GetDatasetStatus"] * 4 + ["SaveKernel"]
    out = capsys.readouterr().out
    assert (f"upload: waiting for Kaggle to process {DATASET} (status: blobs_received)\n"
            f"upload: waiting for Kaggle to process {DATASET} (status: blobs_decompressed)\n"
            f"upload: dataset {DATASET} is ready (version 1)\n") in out


def test_a_new_version_waits_until_kaggle_stops_reporting_the_previous_one_as_ready(dist, fake, capsys):
    assert run(dist) == 0
    fake.statuses = ["STALE", "STALE", "BLOBS_RECEIVED"]  # right after the upload: version 1, ready

    assert run(dist) == 0

    out = capsys.readouterr().out.split(f"upload: dataset {DATASET} exists", 1)[1]
    assert (f"upload: waiting for Kaggle to process {DATASET} (status: ready, but still version 1)\n"
            f"upload: waiting for Kaggle to process {DATASET} (status: blobs_received)\n"
            f"upload: dataset {DATASET} is ready (version 2)\n") in out
    statuses_before_push = [r for r in fake.requests if r["what"] in ("GetDatasetStatus", "SaveKernel")]
    assert [r["what"] for r in statuses_before_push[-5:]] == ["GetDatasetStatus"] * 4 + ["SaveKernel"]
    assert len(fake.kernels) == 2


def test_a_kaggle_client_without_field_selection_still_reports_the_status():
    from submission.upload import dataset_state

    class OlderClient:  # kaggle 1.x: dataset_status(dataset) -> str
        def dataset_status(self, dataset):
            return "ready"

    assert dataset_state(OlderClient(), "tester/birdclef-kit-model") == ("ready", None)


def test_a_dataset_kaggle_could_not_process_stops_before_the_notebook(dist, fake, capsys):
    fake.statuses = ["FAILED"]

    assert run(dist) == 1

    assert error_in(capsys.readouterr().err) == (
        f"error: Kaggle could not process the dataset {DATASET} (status: failed): open "
        f"https://www.kaggle.com/datasets/{DATASET} to see why, fix it, then rerun `make upload`\n")
    assert fake.kernels == []


def test_a_dataset_still_processing_after_the_wait_says_how_to_push_the_notebook_alone(dist, fake, capsys):
    fake.statuses = ["BLOBS_RECEIVED"] * 20

    assert run(dist, "--wait-s", "0") == 1

    assert error_in(capsys.readouterr().err) == (
        f"error: the dataset {DATASET} was still 'blobs_received' after 0 s; a notebook pushed now would mount its "
        f"previous version.\n  Check https://www.kaggle.com/datasets/{DATASET}, then push the notebook alone: "
        "python -m submission.upload --notebook-only\n")
    assert fake.kernels == []

    assert run(dist, "--notebook-only") == 0
    assert len(fake.kernels) == 1 and len(fake.datasets[DATASET]) == 1


def test_a_first_upload_works_where_kaggle_answers_403_for_a_dataset_it_does_not_show_yet(dist, fake, capsys):
    fake.unknown_dataset_status = 403  # "Permission 'datasets.get' was denied": not there, or not visible yet
    fake.statuses = ["FORBIDDEN", "BLOBS_RECEIVED"]

    assert run(dist) == 0

    assert len(fake.datasets[DATASET]) == 1 and len(fake.kernels) == 1
    out = capsys.readouterr().out
    assert f"upload: dataset {DATASET} does not exist yet: creating it (private)\n" in out
    assert (f"upload: waiting for Kaggle to process {DATASET} (status: not visible yet)\n"
            f"upload: waiting for Kaggle to process {DATASET} (status: blobs_received)\n"
            f"upload: dataset {DATASET} is ready (version 1)\n") in out


def test_a_kaggle_api_token_is_sent_as_a_bearer_token(dist, fake, monkeypatch, capfd):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", FAKE_TOKEN)

    assert run(dist) == 0

    assert {r["auth"] for r in fake.requests if r["what"] in ("CreateDataset", "SaveKernel")} == {f"Bearer {FAKE_TOKEN}"}
    captured = capfd.readouterr()
    assert_no_secret(captured.out + captured.err)


# ---------------------------------------------------------------- refusals and errors


def test_ids_with_the_placeholder_user_are_refused_before_anything_is_sent(env, fake, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_USERNAME")
    dist = make_dist(env)  # no user name anywhere: the placeholder
    assert json.loads((dist / "dataset" / "dataset-metadata.json").read_text())["id"].startswith("your-kaggle-username/")
    capsys.readouterr()

    assert run(dist) == 1

    assert capsys.readouterr().err == (
        "error: dataset-metadata.json and kernel-metadata.json still name the placeholder user "
        "'your-kaggle-username': `make package` found no Kaggle user name.\n"
        "  Set KAGGLE_USERNAME (or save your kaggle.json in ~/.kaggle), re-run `make package`, then `make upload`.\n")
    assert fake.requests == []


def test_ids_of_another_user_than_the_credentials_are_refused(dist, fake, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone-else")

    assert run(dist) == 1

    assert capsys.readouterr().err == (
        "error: the packaged ids belong to 'tester', but the credentials from KAGGLE_USERNAME/KAGGLE_KEY are for "
        "'someone-else'.\n  Re-run `make package` with KAGGLE_USERNAME=someone-else, or use that account's "
        "credentials.\n")
    assert fake.requests == []


def test_ids_of_another_user_than_an_access_tokens_are_refused_once_kaggle_names_its_user(env, fake, monkeypatch,
                                                                                          capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone-else")
    dist = make_dist(env)
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", FAKE_TOKEN)  # a token names no user: Kaggle tells whose it is
    capsys.readouterr()

    assert run(dist) == 1

    assert capsys.readouterr().err == (
        "error: the packaged ids belong to 'someone-else', but the credentials from KAGGLE_API_TOKEN (user tester) "
        "are for 'tester'.\n  Re-run `make package` with KAGGLE_USERNAME=tester, or use that account's credentials.\n")
    assert [r["what"] for r in fake.requests] == ["introspect"]  # nothing uploaded


def test_packaging_finds_the_user_name_where_the_kaggle_client_finds_kaggle_json(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("KAGGLE_USERNAME", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".config" / "kaggle").mkdir(parents=True)  # no ~/.kaggle: Linux's ~/.config/kaggle
    (tmp_path / ".config" / "kaggle" / "kaggle.json").write_text('{"username": "xdguser", "key": "k"}')
    assert package.kaggle_username() == "xdguser"
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "legacy", "key": "k"}')
    assert package.kaggle_username() == "legacy"


def test_no_package_yet_says_to_run_make_package(env, capsys):
    assert run(env / "nothing-here") == 1
    assert capsys.readouterr().err == (
        f"error: {env / 'nothing-here' / 'dataset' / 'dataset-metadata.json'} not found: run `make package` first\n")


def test_missing_credentials_print_how_to_get_a_token(dist, fake, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")

    assert run(dist) == 1

    config = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    assert capsys.readouterr().err == (
        "error: no Kaggle API credentials found.\n"
        '  Create a token at https://www.kaggle.com/settings/api ("Create New Token"), save the downloaded '
        f"kaggle.json as\n  {config} and run `chmod 600 {config}`,\n"
        "  or export KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN) in this shell. Then rerun.\n")
    assert fake.requests == []


def test_rejected_credentials_say_to_create_a_new_token(dist, fake, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_KEY", "a-revoked-key")

    assert run(dist) == 1

    assert capsys.readouterr().err == (
        "error: Kaggle rejected the credentials from KAGGLE_USERNAME/KAGGLE_KEY (HTTP 401: Unauthenticated).\n"
        '  The token is mistyped, expired or was revoked: create a new one at https://www.kaggle.com/settings/api '
        '("Create New Token"),\n  put it in place of KAGGLE_USERNAME/KAGGLE_KEY, and rerun.\n')
    assert fake.datasets == {} and fake.kernels == []


def test_a_refused_dataset_creation_says_why_and_pushes_no_notebook(dist, fake, capsys):
    fake.fail = {"CreateDataset": 403}

    assert run(dist) == 1

    assert capsys.readouterr().err.endswith(
        f"error: Kaggle refused to create the dataset {DATASET} (HTTP 403: Permission 'datasets.create' was denied).\n"
        "  The account of KAGGLE_USERNAME/KAGGLE_KEY may not do that: check that it is the owner named in the "
        "packaged ids,\n  that it is phone-verified (https://www.kaggle.com/settings/api) and has accepted the "
        "competition rules, then rerun.\n")
    assert fake.datasets == {} and fake.kernels == []


def test_a_refused_competition_source_names_it(dist, fake, capsys):
    fake.kernel_response = {"invalidCompetitionSources": ["birdclef-2024"]}

    assert run(dist) == 1

    assert error_in(capsys.readouterr().err) == (
        f"error: Kaggle did not accept the notebook {KERNEL}: competition sources ['birdclef-2024'].\n"
        "  Accept the competition rules on its page (https://www.kaggle.com/competitions/birdclef-2024/rules), or "
        f"check the ids in {dist / 'notebook' / 'kernel-metadata.json'}.\n")


def test_an_unreachable_kaggle_says_to_check_the_network(dist, capsys):
    with port_lock():  # nothing of ours listens on 7777 meanwhile
        if not port_is_free():
            pytest.skip("port 7777 is busy: cannot arrange for nothing to listen there")
        assert run(dist) == 1

    assert capsys.readouterr().err == (
        f"error: could not reach Kaggle at http://localhost:7777 (connection refused) when trying to look up the "
        f"dataset {DATASET}.\n"
        "  Check the network connection and proxy settings (HTTPS_PROXY), then rerun `make upload`.\n")


@pytest.mark.parametrize("scenario", ["ok", "401", "403", "failed"])
def test_the_key_is_never_printed_logged_nor_written(dist, fake, env, scenario, monkeypatch, capfd, caplog):
    from kaggle.api.kaggle_api_extended import KaggleApi

    monkeypatch.setattr(KaggleApi, "args", ["--verbose"])  # what `import kaggle` under VERBOSE=1 sets up
    caplog.set_level(logging.DEBUG)
    fake.fail = {"401": {"GetDatasetStatus": 401}, "403": {"SaveKernel": 403}}.get(scenario, {})
    fake.statuses = ["FAILED"] if scenario == "failed" else []

    assert run(dist) == (0 if scenario == "ok" else 1)

    captured = capfd.readouterr()
    assert_no_secret(captured.out + captured.err + caplog.text)
    assert_no_secret_in_files(dist, Path(tempfile.gettempdir()))


def test_an_unexpected_failure_keeps_its_traceback_but_not_the_key(dist, fake, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError(f"boom near {FAKE_KEY}")

    monkeypatch.setattr(upload, "push_notebook", broken)

    assert run(dist) == 1

    err = capsys.readouterr().err
    assert err[err.index("Traceback"):].startswith("Traceback (most recent call last):\n")
    assert err.endswith("RuntimeError: boom near ***\n")


def test_the_command_line_has_help_naming_every_option():
    result = subprocess.run([sys.executable, "-m", "submission.upload", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0
    for option in ("--dist", "--message", "--public", "--notebook-only", "--wait-s"):
        assert option in result.stdout


def test_a_dataset_kaggle_reports_deleted_stops_the_wait_at_once_naming_the_status():
    from data.download import Credentials
    from submission.upload import UploadError, wait_until_ready

    class Api:
        def dataset_status(self, ref, format=None):
            return json.dumps({"status": "deleted", "current_version_number": 2})

    with pytest.raises(UploadError, match=r"could not process the dataset me/birds \(status: deleted\)"):
        wait_until_ready(Api(), "me/birds", Credentials("test"), timeout_s=600, poll_s=10,
                         sleep=lambda s: pytest.fail("waited on a deleted dataset"), clock=lambda: 0.0)


def test_a_rerun_after_the_wait_timed_out_versions_the_existing_dataset_rather_than_creating_it_again(
        tmp_path, monkeypatch, capsys):
    import tempfile

    work = fake_credentials(monkeypatch, tmp_path, USERNAME, FAKE_KEY)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    dist = make_dist(work)
    kaggle = FakeKaggle(archives={}, username=USERNAME, key=FAKE_KEY, token=FAKE_TOKEN)
    with serving(kaggle):
        kaggle.statuses = ["BLOBS_RECEIVED"] * 20
        assert run(dist, "--wait-s", "0") == 1  # the dataset exists, still being processed
        kaggle.statuses = []
        capsys.readouterr()

        assert run(dist) == 0  # its status is 'blobs_received', not 'ready': it exists all the same

    rpcs = [r["what"] for r in kaggle.requests if r["what"] != "PUT"]
    assert rpcs.count("CreateDataset") == 1 and rpcs.count("CreateDatasetVersion") == 1
    assert len(kaggle.datasets[DATASET]) == 2 and len(kaggle.kernels) == 1
    assert f"upload: dataset {DATASET} exists: uploading a new version" in capsys.readouterr().out
