"""keras.utils.get_file: download a file once into Keras's cache folder, check its hash, extract.

The cache is Keras's own (`$KERAS_HOME`, else `~/.keras`), so files Keras already downloaded are
reused, offline too. A download streams into a temporary file beside its target and is renamed
into place only once complete and, when a hash is given, matching: the cache never holds a partial
or corrupt file. A failed download names the URL and the exact path where the file can be placed
by hand.
"""
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import warnings
import zipfile
from urllib.request import urlopen

from .progbar import Progbar

# Seconds of network silence after which a download gives up (a dead connection never hangs).
SOCKET_TIMEOUT = 30.0
_CHUNK = 1 << 16


class DownloadError(OSError):
    """get_file could not fetch `origin` (offline, server down, HTTP error)."""


def keras_home():
    """Keras's cache root: $KERAS_HOME, else ~/.keras (/tmp/.keras when home is not writable).
    Read at each call, unlike Keras (which reads it once at import)."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
        base = "/tmp"
    return os.path.join(base, ".keras")


def _tmp_keras_dir():
    return os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")


def get_file(fname=None, origin=None, untar=False, md5_hash=None, file_hash=None,
             cache_subdir="datasets", hash_algorithm="auto", extract=False,
             archive_format="auto", cache_dir=None, force_download=False):
    """Download `origin` into `cache_dir/cache_subdir/fname` unless it is already there (with the
    right hash, when `file_hash` is given); return its path, or with `extract=True` the folder
    the archive was extracted into. Keras 3's signature, defaults and file layout.

    hash_algorithm "auto" takes a 64-digit `file_hash` for sha256 and any other for md5.
    Raises DownloadError (an OSError) when the file cannot be fetched, naming the URL and the
    path to place it at by hand; ValueError when the downloaded file's hash is wrong (nothing
    is left in the cache).

    Args:
        fname: Name of the file in the cache; `None`: from `origin`.
        origin: The URL to download from. Defaults to `None`.
        untar: Legacy: extract a tar archive (use `extract`). Defaults to `False`.
        md5_hash: Legacy: the file's MD5 hash (use `file_hash`). Defaults to `None`.
        file_hash: The expected hash (SHA-256 or MD5) of the file, or `None`.
        cache_subdir: Subfolder of the cache. Defaults to `"datasets"`.
        hash_algorithm: `"auto"`, `"sha256"` or `"md5"`. Defaults to `"auto"`.
        extract: Whether to extract the archive. Defaults to `False`.
        archive_format: `"auto"`, `"tar"`, `"zip"`, or a list of them. Defaults to `"auto"`.
        cache_dir: The cache folder; `None`: `$KERAS_HOME` or `~/.keras`.
        force_download: Whether to download even when a cached copy exists. Defaults to `False`.

    Returns:
        The path of the file (or of the extracted folder).
    """
    if origin is None:
        raise ValueError('Please specify the "origin" argument (URL of the file to download).')
    if md5_hash is not None and file_hash is None:
        file_hash, hash_algorithm = md5_hash, "md5"
    if hash_algorithm not in ("auto", "sha256", "md5"):
        raise ValueError("Invalid value for argument `hash_algorithm`: expected one of 'auto', "
                         f"'sha256', 'md5'. Received: hash_algorithm={hash_algorithm!r}")
    if file_hash is not None:
        file_hash = str(file_hash).lower()
    algorithm = _resolve_algorithm(hash_algorithm, file_hash)

    provided = fname
    fname = os.fspath(fname) if fname is not None else ""
    if not fname:
        fname = os.path.basename(urllib.parse.urlsplit(origin).path)
        if not fname:
            raise ValueError(f"Can't parse the file name from the origin provided: '{origin}'."
                             "Please specify the `fname` argument.")
    elif os.sep in fname or "/" in fname:
        raise ValueError("Paths are no longer accepted as the `fname` argument. To specify the "
                         "file's parent directory, use the `cache_dir` argument. "
                         f"Received: fname={fname}")

    base = os.path.expanduser(os.fspath(cache_dir if cache_dir is not None else keras_home()))
    try:    # Keras creates ~/.keras when it is imported; we create it on first use
        os.makedirs(base, exist_ok=True)
    except OSError:
        pass
    if not os.access(base, os.W_OK):
        base = _tmp_keras_dir()
    datadir = os.path.join(base, cache_subdir)     # an absolute cache_subdir replaces base
    os.makedirs(datadir, exist_ok=True)

    # Keras's layout: with extract, the archive and the folder it unpacks into sit side by side.
    if extract or untar:
        if provided and "." in fname:
            target = os.path.join(datadir, fname)
            extraction_dir = os.path.join(datadir, fname[:fname.find(".")] + "_extracted")
        else:
            extraction_dir = os.path.join(datadir, fname)
            target = os.path.join(datadir, fname + "_archive")
    else:
        target = os.path.join(datadir, fname)

    download, stale = True, None
    if not force_download and os.path.exists(target):
        download = False
        if file_hash is not None:
            actual = hash_file(target, algorithm)
            if actual != file_hash:
                stale = actual
                print(f"A local file was found, but it seems to be incomplete or outdated "
                      f"because the {algorithm} file hash does not match the original value of "
                      f"{file_hash} so we will re-download the data.", file=sys.stderr)
                download = True
    if download:
        _download(origin, target, file_hash, algorithm, stale)

    if extract or untar:
        if not _extract_archive(target, extraction_dir, "tar" if untar else archive_format):
            warnings.warn("Could not extract archive.", stacklevel=2)
        return extraction_dir
    return target


def _resolve_algorithm(hash_algorithm, file_hash):
    if hash_algorithm == "auto":
        return "sha256" if file_hash is not None and len(file_hash) == 64 else "md5"
    return hash_algorithm


def hash_file(fpath, algorithm="sha256", chunk_size=65535):
    """The hex digest of a file, "sha256" or "md5" (keras.utils.file_utils.hash_file)."""
    hasher = hashlib.new(_resolve_algorithm(algorithm, None))    # "auto" alone: md5, as Keras
    with open(fpath, "rb") as f:
        while chunk := f.read(chunk_size):
            hasher.update(chunk)
    return hasher.hexdigest()


def validate_file(fpath, file_hash, algorithm="auto", chunk_size=65535):
    """Whether the file's hash equals `file_hash` (sha256 or md5; "auto" tells by its length)."""
    return hash_file(fpath, _resolve_algorithm(algorithm, file_hash), chunk_size) == file_hash


def _download(origin, target, file_hash, algorithm, stale):
    """Stream `origin` into a temporary file beside `target`, check the hash, rename."""
    print(f"Downloading data from {origin}", file=sys.stderr)
    folder, name = os.path.split(target)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                _fetch(origin, out)
            except (OSError, http.client.HTTPException) as exc:    # URLError is an OSError
                raise DownloadError(_fetch_failure(origin, target, exc, file_hash, algorithm,
                                                   stale)) from exc
        if file_hash is not None:
            actual = hash_file(tmp, algorithm)
            if actual != file_hash:
                raise ValueError(
                    f"Incomplete or corrupted file detected. The {algorithm} file hash does not "
                    f"match the provided value of {file_hash}: the file downloaded from {origin} "
                    f"has {algorithm} {actual}. Nothing was saved to {target}.")
        os.replace(tmp, target)
    finally:        # any failure, Ctrl-C included: no partial file left behind
        if os.path.exists(tmp):
            os.remove(tmp)


def _fetch(url, out):
    with urlopen(url, timeout=SOCKET_TIMEOUT) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = Progbar(total, stream=sys.stderr)
        done = 0
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            done += len(chunk)
            bar.update(done)
        if total is not None and done < total:
            raise DownloadError(f"connection closed after {done} of {total} bytes")
        if total is None or total == 0:     # the bar only ends its line by itself at `total`
            bar.update(done, finalize=True)


def _fetch_failure(origin, target, exc, file_hash, algorithm, stale):
    if isinstance(exc, urllib.error.HTTPError):
        why = f"{exc.code} -- {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        why = f"{getattr(exc.reason, 'errno', None)} -- {exc.reason}"
    elif isinstance(exc, OSError) and exc.errno is not None:
        why = f"{exc.errno} -- {exc.strerror}"
    else:
        why = str(exc) or type(exc).__name__
    msg = (f"URL fetch failure on {origin}: {why}\n"
           f"If this machine is offline, download {origin} elsewhere and place it at {target}")
    if file_hash is not None:
        msg += f" (its {algorithm} hash must be {file_hash})"
    if stale is not None:
        msg += f"; the file there now has {algorithm} {stale}"
    return msg + "."


# ---------------------------------------------------------------- extraction
def _inside(base, name):
    path = os.path.realpath(os.path.join(base, name))
    try:
        return os.path.commonpath([path, base]) == base
    except ValueError:      # another drive (Windows)
        return False


def _safe_tar_members(archive, base):
    """Members that stay inside `base`, links included (others are skipped with a warning)."""
    for m in archive:
        ok = _inside(base, m.name)
        if ok and m.issym():
            ok = _inside(base, os.path.join(os.path.dirname(m.name), m.linkname))
        elif ok and m.islnk():
            ok = _inside(base, m.linkname)
        if ok:
            yield m
        else:
            warnings.warn(f"Skipping invalid path during archive extraction: '{m.name}'.",
                          stacklevel=3)


def _safe_zip_members(archive, base):
    for info in archive.infolist():
        if _inside(base, info.filename):
            yield info
        else:
            warnings.warn(f"Skipping invalid path during archive extraction: "
                          f"'{info.filename}'.", stacklevel=3)


def _extract_archive(file_path, path, archive_format="auto"):
    """Extract a tar (.tar, .tar.gz, .tar.bz2) or zip archive into `path`; whether one matched.
    On a failure mid-way the partly extracted `path` is removed, as Keras does."""
    if archive_format is None:
        return False
    formats = ["tar", "zip"] if archive_format == "auto" else (
        [archive_format] if isinstance(archive_format, str) else list(archive_format))
    for kind in formats:
        if kind not in ("tar", "zip"):
            raise ValueError("Invalid value for argument `archive_format`: expected 'auto', "
                             f"'tar', 'zip', None or a list of them. Received: {archive_format!r}")
    for kind in formats:
        is_match = tarfile.is_tarfile if kind == "tar" else zipfile.is_zipfile
        if not is_match(file_path):
            continue
        os.makedirs(path, exist_ok=True)
        base = os.path.realpath(path)
        try:
            if kind == "tar":
                with tarfile.open(file_path) as archive:
                    # filter="data" (Python 3.10.12+, 3.11.4+) also refuses device files and
                    # unsafe permissions.
                    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    archive.extractall(path, members=_safe_tar_members(archive, base), **extra)
            else:
                with zipfile.ZipFile(file_path) as archive:
                    archive.extractall(path, members=_safe_zip_members(archive, base))
        except (tarfile.TarError, zipfile.BadZipFile, OSError, RuntimeError, KeyboardInterrupt):
            if os.path.isfile(path):
                os.remove(path)
            elif os.path.isdir(path):
                shutil.rmtree(path)
            raise
        return True
    return False
