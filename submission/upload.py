"""`make upload`: the packaged submission (submission/dist) -> Kaggle, through the real `kaggle` client.

    python -m submission.upload [--dist submission/dist] [--message "..."]

1. Checks dist/: both metadata files name your Kaggle user (not the placeholder `make package`
   writes when it finds none) and the notebook mounts the dataset packaged beside it.
2. The dataset (dist/dataset): created when Kaggle has none under its id, else a new version of it
   (KaggleApi.dataset_create_new / dataset_create_version, which upload each file with
   StartBlobUpload + PUT; the folders code/ and wheels/ go up as zips, which Kaggle unpacks).
3. Waits until Kaggle reports the dataset ready (GetDatasetStatus) at a version past the one it
   replaced (GetDataset): a notebook pushed earlier would mount the previous version.
4. Pushes the notebook (dist/notebook, KaggleApi.kernels_push): Kaggle runs it with the dataset
   and the competition attached, internet and GPU off. Submit it from its page when it finishes.

Credentials as for `make data` (~/.kaggle/kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY, or
KAGGLE_API_TOKEN). The key is never printed: messages name where it came from, never its value.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

from data.download import (SETTINGS_URL, Credentials, DownloadError, _connection_reason, _kaggle_said,
                           http_error_message, kaggle_api, kaggle_endpoint, redact, require_credentials)
from data.paths import dist_dir
from submission.infer import MANIFEST_NAME
from submission.package import USERNAME_PLACEHOLDER

DATASET_META = "dataset-metadata.json"
KERNEL_META = "kernel-metadata.json"
DEFAULT_WAIT_S = 900.0
POLL_S = 5.0


class UploadError(Exception):
    """A failure the user can fix; main prints it as `error: <message>`, without a traceback."""


@dataclass
class Dist:
    """What `make package` wrote, as the upload needs it."""

    dataset_dir: Path
    notebook_dir: Path
    dataset_meta: dict
    kernel_meta: dict
    manifest: dict

    @property
    def dataset_id(self) -> str:
        return self.dataset_meta["id"]

    @property
    def kernel_id(self) -> str:
        return self.kernel_meta["id"]


# ---------------------------------------------------------------- the packaged submission


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UploadError(f"{path} not found: run `make package` first") from None
    except ValueError as e:
        raise UploadError(f"{path} is not valid JSON ({e}): run `make package` again") from None


def read_dist(dist: Path) -> Dist:
    d = Dist(dist / "dataset", dist / "notebook", _read_json(dist / "dataset" / DATASET_META),
             _read_json(dist / "notebook" / KERNEL_META), _read_json(dist / "dataset" / MANIFEST_NAME))
    for meta, name in ((d.dataset_meta, DATASET_META), (d.kernel_meta, KERNEL_META)):
        if not str(meta.get("id", "")).count("/") == 1:
            raise UploadError(f"{name} in {dist} has no id of the form <user>/<slug>: run `make package` again")
    return d


def check_ids(d: Dist, creds: Credentials | None = None) -> None:
    """Refuse ids that would upload under the placeholder user, someone else, or a stale dataset."""
    ids = {DATASET_META: [d.dataset_id], KERNEL_META: [d.kernel_id, *d.kernel_meta.get("dataset_sources", [])]}
    placeholder = [name for name, values in ids.items() if any(v.split("/")[0] == USERNAME_PLACEHOLDER for v in values)]
    if placeholder:
        raise UploadError(
            f"{' and '.join(placeholder)} still name the placeholder user '{USERNAME_PLACEHOLDER}': "
            "`make package` found no Kaggle user name.\n"
            "  Set KAGGLE_USERNAME (or save your kaggle.json in ~/.kaggle), re-run `make package`, then `make upload`.")
    if d.dataset_id not in d.kernel_meta.get("dataset_sources", []):
        raise UploadError(f"the notebook in {d.notebook_dir} does not mount the dataset {d.dataset_id} packaged "
                          "beside it: re-run `make package`")
    owners = {d.dataset_id.split("/")[0], d.kernel_id.split("/")[0]}
    if creds is not None and creds.username and owners != {creds.username}:
        raise UploadError(
            f"the packaged ids belong to '{'/'.join(sorted(owners))}', but the credentials from {creds.source} are "
            f"for '{creds.username}'.\n  Re-run `make package` with KAGGLE_USERNAME={creds.username}, or use that "
            "account's credentials.")


def default_message(manifest: dict) -> str:
    auc = manifest.get("val_roc_auc")
    auc = f", val ROC-AUC {float(auc):.4f}" if auc not in (None, "") else ""
    return f"birdclef kit: {manifest.get('model_name') or 'model'}{auc}, features v{manifest.get('features_version')}"


# ---------------------------------------------------------------- errors in plain words


def upload_http_error_message(error: requests.HTTPError, action: str, creds: Credentials) -> str:
    status = error.response.status_code if error.response is not None else None
    if status == 401:
        return http_error_message(error, "", creds)  # the same bad credentials as for `make data`
    said = _kaggle_said(error)
    if status == 403:
        return (f"Kaggle refused to {action} (HTTP 403: {said}).\n"
                f"  The account of {creds.source} may not do that: check that it is the owner named in the packaged "
                f"ids,\n  that it is phone-verified ({SETTINGS_URL}) and has accepted the competition rules, then rerun.")
    return f"Kaggle answered HTTP {status} ({said}) when asked to {action}; try again later."


@contextlib.contextmanager
def explained(action: str, creds: Credentials):
    """Turn the client's HTTP, network and validation errors into UploadErrors that say what to do."""
    try:
        yield
    except requests.HTTPError as e:
        raise UploadError(upload_http_error_message(e, action, creds)) from None
    except (requests.ConnectionError, requests.Timeout) as e:
        raise UploadError(
            f"could not reach Kaggle at {kaggle_endpoint()} ({_connection_reason(e)}) when trying to {action}.\n"
            "  Check the network connection and proxy settings (HTTPS_PROXY), then rerun `make upload`.") from None
    except ValueError as e:  # the client's own checks of the metadata, or a file it could not upload
        raise UploadError(f"the kaggle client could not {action}: {e}") from None


# ---------------------------------------------------------------- the steps


STATUS_FIELDS = "json(status,current_version_number)"  # the kaggle client's field selection (2.x)


def dataset_state(api, ref: str) -> tuple[str | None, int | None]:
    """Kaggle's status of the dataset ('ready', ...) and its current version number; (None, None)
    when it has none under ref. Kaggle answers 403 ("Permission 'datasets.get' was denied") as well
    as 404 for a dataset that does not exist, or not yet visibly (just created): the kaggle
    client's own dataset_create_new reads any error here as "not found". The ids were checked to be
    the signed-in user's, and a real refusal comes back from creating it, in words. The version
    is None from a client too old to report it."""
    try:
        if "format" not in inspect.signature(api.dataset_status).parameters:  # a client before 2.x: status alone
            return api.dataset_status(ref), None
        state = json.loads(api.dataset_status(ref, format=STATUS_FIELDS))
    except requests.HTTPError as e:
        if e.response is not None and e.response.status_code in (403, 404):
            return None, None
        raise
    return state.get("status"), state.get("current_version_number") or None


def upload_dataset(api, d: Dist, message: str, public: bool, creds: Credentials) -> int | None:
    """Create or version the dataset; returns the version it replaces (None for a new dataset,
    or where the client cannot tell)."""
    ref = d.dataset_id
    with explained(f"look up the dataset {ref}", creds):
        status, previous = dataset_state(api, ref)
    exists = status is not None
    if exists:
        print(f"upload: dataset {ref} exists: uploading a new version ({message!r})")
        with explained(f"upload a new version of the dataset {ref}", creds):
            result = api.dataset_create_version(str(d.dataset_dir), message, dir_mode="zip")
    else:
        print(f"upload: dataset {ref} does not exist yet: creating it ({'public' if public else 'private'})")
        with explained(f"create the dataset {ref}", creds):
            result = api.dataset_create_new(str(d.dataset_dir), public=public, dir_mode="zip")
    error = getattr(result, "error", None)
    if error or str(getattr(result, "status", "ok") or "ok").lower() not in ("ok", ""):
        raise UploadError(f"Kaggle did not {'version' if exists else 'create'} the dataset {ref}: {error or result.status}")
    if getattr(result, "invalid_tags", None):
        print(f"upload: Kaggle ignored these invalid tags: {result.invalid_tags}")
    return previous if exists else None


def wait_until_ready(api, ref: str, creds: Credentials, timeout_s: float = DEFAULT_WAIT_S, poll_s: float = POLL_S,
                     sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                     replaces: int | None = None) -> None:
    """Poll Kaggle until it has processed the dataset's new files. After a new version, 'ready'
    counts only once the current version is past `replaces`: right after the upload Kaggle may
    still report the previous version, ready, and a notebook pushed then would mount it."""
    deadline = clock() + timeout_s
    last = None
    while True:
        with explained(f"check the status of the dataset {ref}", creds):
            status, version = dataset_state(api, ref)
        status = status or "not visible yet"
        if status == "ready" and replaces is not None and version is not None and version <= replaces:
            status = f"ready, but still version {version}"
        if status == "ready":
            print(f"upload: dataset {ref} is ready" + (f" (version {version})" if version else ""))
            return
        if status in ("failed", "deleted"):
            raise UploadError(f"Kaggle could not process the dataset {ref} (status: {status}): open "
                              f"https://www.kaggle.com/datasets/{ref} to see why, fix it, then rerun `make upload`")
        if status != last:
            print(f"upload: waiting for Kaggle to process {ref} (status: {status})")
            last = status
        if clock() >= deadline:
            raise UploadError(
                f"the dataset {ref} was still '{status}' after {timeout_s:.0f} s; a notebook pushed now would mount "
                "its previous version.\n  Check https://www.kaggle.com/datasets/" + ref + ", then push the notebook "
                "alone: python -m submission.upload --notebook-only")
        sleep(poll_s)


def push_notebook(api, d: Dist, creds: Credentials) -> None:
    with explained(f"push the notebook {d.kernel_id}", creds):
        result = api.kernels_push(str(d.notebook_dir))
    invalid = {name: getattr(result, f"invalid_{name}_sources", None) or []
               for name in ("dataset", "competition", "kernel", "model")}
    problems = [f"{name} sources {values}" for name, values in invalid.items() if values]
    if getattr(result, "error", None) or problems:
        raise UploadError(f"Kaggle did not accept the notebook {d.kernel_id}: "
                          + "; ".join(filter(None, [getattr(result, "error", None), *problems]))
                          + (".\n  Accept the competition rules on its page ("
                             + ", ".join(f"https://www.kaggle.com/competitions/{c}/rules"
                                         for c in d.kernel_meta.get("competition_sources", []))
                             + f"), or check the ids in {d.notebook_dir / KERNEL_META}." if problems else ""))
    version = f" (version {result.version_number})" if getattr(result, "version_number", None) else ""
    print(f"upload: notebook pushed{version}: {result.url or d.kernel_id}")
    print("upload: Kaggle runs it now; when it has finished, submit it to the competition from its page")


# ---------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m submission.upload",
        description="Upload the packaged submission to Kaggle: create the kit dataset (or a new version of it), "
        "wait until Kaggle has processed it, then push the notebook. Credentials: ~/.kaggle/kaggle.json "
        "(or $KAGGLE_CONFIG_DIR/kaggle.json), KAGGLE_USERNAME + KAGGLE_KEY, or KAGGLE_API_TOKEN.")
    p.add_argument("--dist", type=Path, help="the packaged submission (default: submission/dist)")
    p.add_argument("--message", help="version notes of a new dataset version (default: model and val ROC-AUC)")
    p.add_argument("--public", action="store_true", help="create the dataset public (default: private)")
    p.add_argument("--notebook-only", action="store_true", help="push the notebook only, leaving the dataset as is")
    p.add_argument("--wait-s", type=float, default=DEFAULT_WAIT_S,
                   help="how long to wait for Kaggle to process the dataset (default: %(default)s)")
    p.add_argument("--poll-s", type=float, default=POLL_S, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run(args: argparse.Namespace, secrets: list[str]) -> None:
    d = read_dist(args.dist or dist_dir())
    check_ids(d)
    creds = require_credentials()
    secrets.extend(creds.secrets())
    check_ids(d, creds)
    if not d.manifest.get("wheels", {}).get("bundled", True):
        needs = ", ".join(d.manifest["wheels"].get("requirements", {}).values())
        print(f"note: the dataset holds no wheels (packaged with --no-wheels): attach a dataset with {needs} "
              "to the notebook on Kaggle")
    with explained("sign in", creds):
        api = kaggle_api(creds)
    signed_in = api.config_values.get(api.CONFIG_NAME_USER)  # an access token's user, from Kaggle
    if signed_in and not creds.username:
        check_ids(d, dataclasses.replace(creds, username=signed_in, source=f"{creds.source} (user {signed_in})"))
    if not args.notebook_only:
        replaces = upload_dataset(api, d, args.message or default_message(d.manifest), args.public, creds)
        wait_until_ready(api, d.dataset_id, creds, args.wait_s, args.poll_s, replaces=replaces)
    push_notebook(api, d, creds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    secrets: list[str] = []
    try:
        run(args, secrets)
    except (UploadError, DownloadError) as e:
        print(f"error: {redact(str(e), secrets)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: rerun `make upload`; Kaggle keeps what it had before", file=sys.stderr)
        return 130
    except Exception:
        # A bug, not a user error: keep the traceback, but never with the key in it.
        print(redact(traceback.format_exc(), secrets), end="", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
