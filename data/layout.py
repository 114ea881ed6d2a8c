"""The Kaggle BirdCLEF layout: reading it, checking it, and the class list that comes from it.

    <DATA>/train_audio/<primary_label>/<stem>.ogg
    <DATA>/train_metadata.csv          primary_label,secondary_labels,type,...,filename
                                       (BirdCLEF 2025 names it train.csv)
    <DATA>/eBird_Taxonomy_v2021.csv    (2025: taxonomy.csv; the kit does not read it)
    <DATA>/sample_submission.csv       row_id + one column per class
    <DATA>/unlabeled_soundscapes/*.ogg (2025: train_soundscapes/)
    <DATA>/test_soundscapes/*.ogg      (empty in Kaggle's public data)
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from data.features import audio_seconds, is_audio_file

METADATA_COLUMNS = [
    "primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name",
    "common_name", "author", "license", "rating", "url", "filename",
]
# The recordings' metadata: train_metadata.csv in BirdCLEF 2023-2024, train.csv in 2025.
METADATA_NAMES = ("train_metadata.csv", "train.csv")
# Soundscapes without labels: unlabeled_soundscapes/ in BirdCLEF 2023-2024, train_soundscapes/ in 2025.
UNLABELED_SOUNDSCAPE_DIRS = ("unlabeled_soundscapes", "train_soundscapes")
REQUIRED_ENTRIES = ["train_audio", " or ".join(METADATA_NAMES), "sample_submission.csv"]
DEFAULT_COMPETITION = "birdclef-2024"
# The length of each competition's hidden test soundscapes (its data page); 2024's for one the kit
# does not know. submission.budget's test sets and `make holdout`'s default length read it.
TEST_SOUNDSCAPE_S = {"birdclef-2023": 600.0, "birdclef-2024": 240.0, "birdclef-2025": 60.0}
# 2021 and 2022 scored a long table (row_id + the species heard); the kit writes one column per class.
LONG_SUBMISSION_COLUMNS = {"target", "birds"}
# Their slugs: `make data` refuses them before downloading. A slug the kit does not know (a new year) is
# downloaded and judged by its layout, like any other.
LONG_TABLE_COMPETITIONS = ("birdclef-2021", "birdclef-2022")


class LayoutError(ValueError):
    """The folder is not in the Kaggle BirdCLEF layout."""


def require_layout(data_dir: Path) -> None:
    """Fail fast, saying what is missing and how to get it."""
    if data_dir.is_file():
        raise LayoutError(f"DATA={data_dir} is a file, not a folder: point DATA at the dataset folder that holds "
                          f"train_audio/, the metadata and sample_submission.csv (DATA={data_dir.parent}?)")
    if not data_dir.is_dir():
        raise LayoutError(
            f"DATA={data_dir} does not exist: check the path, or download a competition into it with "
            f"`make data DATA={data_dir} COMPETITION=<slug>` (a folder named after the competition, e.g. "
            "data/birdclef-2024, needs no COMPETITION), run `make sample` for the embedded sample, or point DATA= "
            "at a folder in the Kaggle layout."
        )
    missing = missing_entries(data_dir)
    if missing:
        older = " (BirdCLEF 2021 layout: the kit reads 2023-2025's)" if (data_dir / "train_short_audio").is_dir() else ""
        raise LayoutError(f"DATA={data_dir} is not in the Kaggle BirdCLEF layout: it lacks {', '.join(missing)}{older}. "
                          f"{_layout_hint(data_dir, bool(older))}")
    long_format = LONG_SUBMISSION_COLUMNS & set(submission_header(data_dir))
    if long_format:
        raise LayoutError(
            f"{data_dir / 'sample_submission.csv'} is in the long format of BirdCLEF 2021-2022 "
            f"(row_id,{sorted(long_format)[0]}); the kit writes one probability column per class, the format "
            "of BirdCLEF 2023-2025. Use one of those competitions (COMPETITION=birdclef-2024)."
        )


def _layout_hint(data_dir: Path, older: bool) -> str:
    """How to mend a folder that lacks part of the layout: another year's data, a dataset one
    folder down (DATA named its parent), or the missing files themselves."""
    if older:
        return "Download a 2023-2025 competition (make data COMPETITION=birdclef-2024)."
    inside = [p for p in sorted(data_dir.iterdir()) if p.is_dir() and not missing_entries(p)]
    if inside:
        return f"{inside[0]} is a dataset: did you mean DATA={inside[0]}?"
    return ("Point DATA at the folder that holds them, restore what is missing from the competition's zip "
            "(make data DATA=... DATA_ARGS=--force downloads it again), or run `make sample` for the embedded sample.")


def competition_of(data_dir: Path | str) -> str:
    """The Kaggle slug a dataset folder belongs to: its name where `make data` named it after the
    competition (data/birdclef-2025), else DEFAULT_COMPETITION. The packaged notebook attaches it."""
    name = Path(data_dir).resolve().name
    return name if is_birdclef_slug(name) else DEFAULT_COMPETITION


def is_birdclef_slug(name: str) -> bool:
    """birdclef-YYYY: the slugs of the competition's years, known to the kit or not yet."""
    return re.fullmatch(r"birdclef-20\d\d", name) is not None


def long_table_refusal(competition: str) -> str:
    """Why a 2021-2022 slug is refused, in the words download and package both use."""
    return (f"the kit does not support {competition}: BirdCLEF 2021-2022 scored a long table (row_id + the species "
            "heard), and the kit writes one probability column per class")


def slug_problem(competition: str) -> str | None:
    """Why a notebook cannot be packaged for this competition slug, or None. The slug goes into
    kernel-metadata.json's competition_sources: a typo there attaches nothing on Kaggle."""
    known = ", ".join(sorted(TEST_SOUNDSCAPE_S))
    if competition in LONG_TABLE_COMPETITIONS:
        return f"{long_table_refusal(competition)} ({known})"
    if not is_birdclef_slug(competition):
        return (f"--competition {competition} is not a BirdCLEF slug (birdclef-YYYY: {known}): the notebook would "
                "attach a competition Kaggle does not have; check COMPETITION=")
    return None


def competition_soundscape_s(data_dir: Path | str, competition: str | None = None) -> float:
    """Seconds per hidden test soundscape of `competition`, else of the one data_dir's name says
    (240, 2024's, where the kit does not know it)."""
    return TEST_SOUNDSCAPE_S.get(competition or competition_of(data_dir), TEST_SOUNDSCAPE_S[DEFAULT_COMPETITION])


def missing_entries(data_dir: Path) -> list[str]:
    """The REQUIRED_ENTRIES that data_dir lacks."""
    have = [(data_dir / "train_audio").exists(), find_metadata(data_dir) is not None,
            (data_dir / "sample_submission.csv").exists()]
    return [entry for entry, ok in zip(REQUIRED_ENTRIES, have) if not ok]


def find_metadata(data_dir: Path) -> Path | None:
    """The recordings' metadata file of data_dir, whichever year's name it has; None when absent."""
    for name in METADATA_NAMES:
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def metadata_path(data_dir: Path) -> Path:
    """find_metadata, failing with the layout's error when there is none."""
    require_layout(data_dir)
    return find_metadata(data_dir)


def parse_list(text) -> list[str]:
    """'['a', 'b']' (a Python-list string, as Kaggle writes them) -> ['a', 'b'].

    BirdCLEF 2025 writes "['']" for no secondary label: empty names are dropped. Text that is not
    a list reads as no labels (read_metadata warns about it)."""
    return _list_or_none(text) or []


def _list_or_none(text) -> list[str] | None:
    """parse_list, but None for text that is not a list literal."""
    if isinstance(text, list):
        return text
    if not isinstance(text, str) or not text.strip():
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, (list, tuple)):
        return None
    return [str(v).strip() for v in value if str(v).strip()]


def read_metadata(data_dir: Path) -> pd.DataFrame:
    """train_metadata.csv (2025: train.csv) with secondary_labels parsed to lists, one row per recording.

    primary_label is read as text: 2025 names some species by a number (iNaturalist ids)."""
    path = metadata_path(data_dir)
    meta = _read_with_line_numbers(path)
    lacking = [c for c in ("primary_label", "filename") if c not in meta.columns]
    if lacking:
        raise LayoutError(f"{path} lacks the column(s) {lacking}: the kit reads Kaggle's comma-separated metadata, "
                          f"with primary_label (the species) and filename (under train_audio/); its header reads "
                          f"{list(meta.columns)[:6]}")
    if meta.empty:  # else every stage runs on nothing and fails later, far from the cause
        raise LayoutError(f"{path} has no rows: it names no recording to train on. Restore the competition's file "
                          "(`make data` downloads and checks it) or add one row per file under train_audio/")
    refuse_empty_primary_labels(path, meta)
    refuse_files_with_two_species(path, meta)
    meta["secondary_labels"] = secondary_labels(path, meta)
    meta = meta.drop_duplicates("filename").sort_values("filename").reset_index(drop=True)
    return meta


def _read_with_line_numbers(path: Path) -> pd.DataFrame:
    """The metadata, indexed by each row's line in the file (the header is line 1), blank lines
    dropped only after numbering, so that a message's 'line 7' is the line an editor shows.
    BirdCLEF's metadata holds no line break inside a field."""
    meta = pd.read_csv(path, keep_default_na=False, dtype={"primary_label": str}, skip_blank_lines=False)
    meta.index = meta.index + 2
    blank = (meta.astype(str).apply(lambda column: column.str.strip()) == "").all(axis=1)
    return meta[~blank]


def _rows(meta: pd.DataFrame, where: pd.Series, show: int = 5, value: str | None = None) -> str:
    """'line 3 (a/XC1.ogg), line 7 (b/XC2.ogg) (+2 more)': the file's lines of the rows `where` marks
    (meta is indexed by line, as _read_with_line_numbers reads it)."""
    picked = meta[where]
    shown = [f"line {i} ({r['filename']}" + (f": {r[value]!r}" if value else "") + ")"
             for i, r in picked.head(show).iterrows()]
    return ", ".join(shown) + (f" (+{len(picked) - show} more)" if len(picked) > show else "")


def refuse_empty_primary_labels(path: Path, meta: pd.DataFrame) -> None:
    """A row without a species would train a class named ''."""
    empty = meta.primary_label.str.strip() == ""
    if empty.any():
        raise LayoutError(f"{path} has an empty primary_label on {_rows(meta, empty)}: every recording needs its "
                          "species (the name of its train_audio/ folder): fill it in, or delete the row")


def refuse_files_with_two_species(path: Path, meta: pd.DataFrame) -> None:
    """Rows naming one file with different primary labels: keeping the first (as duplicates are) would
    train the file as one of them and drop, unseen, a class only the other row names."""
    species = meta.groupby("filename").primary_label.nunique()
    torn = meta.filename.isin(species[species > 1].index)
    if torn.any():
        raise LayoutError(f"{path} gives one file two primary labels, on {_rows(meta, torn, value='primary_label')}: "
                          "keep one row per file (a second species heard in it belongs in its secondary_labels)")


_WARNED: set[tuple[str, str]] = set()  # (metadata, lines) already warned about: once per command, not per stage


def secondary_labels(path: Path, meta: pd.DataFrame) -> pd.Series:
    """The parsed secondary_labels ([] where the column is absent). Text that is not a list is read
    as no labels, as before, with one warning naming its rows: they are extra targets, not worth a
    refusal, but a silently lost label is a wrong answer."""
    if "secondary_labels" not in meta.columns:
        return pd.Series([[] for _ in range(len(meta))], index=meta.index, dtype=object)
    parsed = meta.secondary_labels.map(_list_or_none)
    bad = parsed.isna()
    if bad.any():
        where = _rows(meta, bad, value="secondary_labels")
        if (str(path), where) not in _WARNED:
            _WARNED.add((str(path), where))
            print(f"warning: {path}: secondary_labels that are not a list like \"['a', 'b']\" are read as none, "
                  f"on {where}")
    return parsed.map(lambda v: [] if v is None else v)


def class_list(meta: pd.DataFrame) -> list[str]:
    """The classes are the data's primary labels, sorted (Kaggle's sample_submission order)."""
    return sorted(meta["primary_label"].unique().tolist())


def require_two_classes(data_dir: Path, meta: pd.DataFrame) -> None:
    """Training, its validation ROC-AUC and Kaggle's metric need two classes or more: a one-species
    dataset is refused here, before preprocessing, not by the model builder after it."""
    classes = class_list(meta)
    if len(classes) < 2:
        raise LayoutError(f"{find_metadata(data_dir)} names a single species ({classes[0]!r}): the kit trains a "
                          "classifier of two or more (ROC-AUC needs another class to rank against). Add the "
                          "recordings of another species (train_audio/<species>/ and their metadata rows)")


def class_change(old: list[str], new: list[str]) -> str:
    """How a class list changed, for refusals: 'added: a, b; removed: c'."""
    added, removed = [c for c in new if c not in old], [c for c in old if c not in new]

    def names(items: list[str], show: int = 10) -> str:
        return ", ".join(items[:show]) + (f" (+{len(items) - show} more)" if len(items) > show else "")

    parts = ([f"added: {names(added)}"] if added else []) + ([f"removed: {names(removed)}"] if removed else [])
    return "; ".join(parts) or "same classes, other order"


def class_disagreement(data_dir: Path, meta: pd.DataFrame) -> str | None:
    """Where the metadata's species and sample_submission.csv's columns differ, what differs:
    a model trained on such data cannot fill the submission's columns as they are."""
    if not (data_dir / "sample_submission.csv").exists():
        return None
    classes, columns = set(class_list(meta)), set(submission_columns(data_dir))
    if classes == columns:
        return None
    return (f"{find_metadata(data_dir).name} and sample_submission.csv of {data_dir} name different species (only "
            f"in the metadata: {sorted(classes - columns)[:5]}, only in sample_submission: "
            f"{sorted(columns - classes)[:5]}): add the missing columns to sample_submission.csv or drop those "
            "metadata rows, then train (`make package` refuses a model whose classes are not the columns)")


def submission_columns(data_dir: Path) -> list[str]:
    """Class columns of sample_submission.csv, in its order."""
    return [c for c in submission_header(data_dir) if c != "row_id"]


def submission_header(data_dir: Path) -> list[str]:
    """sample_submission.csv's header, read as text (2025 has numeric class names)."""
    return pd.read_csv(data_dir / "sample_submission.csv", nrows=0).columns.astype(str).tolist()


def list_audio(folder: Path) -> list[Path]:
    """The audio files under folder, sorted; hidden ones (macOS's `._<name>.ogg` metadata) are not audio."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if is_audio_file(p))


def unlabeled_soundscapes(data_dir: Path) -> list[Path]:
    """The dataset's unlabeled soundscapes, in whichever year's folder they are."""
    return [p for name in UNLABELED_SOUNDSCAPE_DIRS for p in list_audio(Path(data_dir) / name)]


@dataclass
class LayoutReport:
    """What `make data` prints after unzipping: counts and every inconsistency found."""

    data_dir: Path
    species: int = 0
    recordings: int = 0
    total_hours: float = 0.0
    unreadable: list[str] = field(default_factory=list)
    rows_without_file: list[str] = field(default_factory=list)
    files_without_row: list[str] = field(default_factory=list)
    folders_without_rows: list[str] = field(default_factory=list)  # class folders no metadata row names
    unlabeled_soundscapes: int = 0
    test_soundscapes: int = 0

    @property
    def ok(self) -> bool:
        return self.recordings > 0 and not self.rows_without_file

    def format(self, show: int = 5) -> str:
        def sample(items: list[str]) -> str:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            return ", ".join(items[:show]) + more

        lines = [
            f"dataset            {self.data_dir}",
            f"species            {self.species}",
            f"recordings         {self.recordings}",
            f"total audio        {self.total_hours:.2f} h",
            f"unlabeled scapes   {self.unlabeled_soundscapes}",
            f"test soundscapes   {self.test_soundscapes}",
            f"unreadable files   {len(self.unreadable)}" + (f": {sample(self.unreadable)}" if self.unreadable else ""),
            f"rows without file  {len(self.rows_without_file)}"
            + (f": {sample(self.rows_without_file)}" if self.rows_without_file else ""),
            f"files without row  {len(self.files_without_row)}"
            + (f": {sample(self.files_without_row)}" if self.files_without_row else ""),
        ]
        if self.folders_without_rows:  # a whole species folder unknown to the metadata: it is not trained on
            lines.append(f"folders not in metadata {len(self.folders_without_rows)}: "
                         f"{sample(self.folders_without_rows)} (their files are ignored: no row gives their labels)")
        return "\n".join(lines)


def validate_layout(data_dir: Path, progress: bool = True) -> LayoutReport:
    """Check the layout and every training file's header."""
    from tqdm import tqdm

    meta = read_metadata(data_dir)
    report = LayoutReport(data_dir=data_dir)
    audio_root = data_dir / "train_audio"
    on_disk = {p.relative_to(audio_root).as_posix() for p in list_audio(audio_root)}
    listed = set(meta["filename"])
    report.rows_without_file = sorted(listed - on_disk)
    report.files_without_row = sorted(on_disk - listed)
    listed_folders = {f.split("/")[0] for f in listed}
    report.folders_without_rows = sorted({f.split("/")[0] for f in report.files_without_row if "/" in f}
                                         - listed_folders)
    report.species = meta["primary_label"].nunique()
    seconds = 0.0
    present = sorted(listed & on_disk)
    for rel in tqdm(present, desc="checking audio", unit="file", disable=not progress):
        dur = audio_seconds(audio_root / rel)
        if dur is None or dur == 0:
            report.unreadable.append(rel)
        else:
            seconds += dur
    report.recordings = len(present)
    report.total_hours = seconds / 3600
    report.unlabeled_soundscapes = len(unlabeled_soundscapes(data_dir))
    report.test_soundscapes = len(list_audio(data_dir / "test_soundscapes"))
    return report
