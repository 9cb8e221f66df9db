"""fastnn.utils.get_file against a local HTTP server on 127.0.0.1 (never the internet): the first
download, cache hits without the network, wrong hashes, a server that is down, KERAS_HOME, and
Keras's extraction layout (compared with keras.utils.get_file when Keras is installed)."""
import hashlib
import http.server
import io
import os
import tarfile
import threading
import zipfile

import numpy as np
import pytest

from fastnn import downloads
from fastnn.utils import get_file

PAYLOAD = np.random.default_rng(0).bytes(300_000)      # several chunks: the bar updates
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Server:
    """A static file server on an ephemeral port, in a thread; counts the requests it gets."""

    def __init__(self, files):
        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):       # keep the test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")     # 127.0.0.1 directly, whatever the machine's proxy
    s = Server({"data.bin": PAYLOAD})
    yield s
    s.stop()


def cache_files(folder):
    """Every file under `folder`, hidden temporaries included, relative to it."""
    return sorted(os.path.relpath(os.path.join(root, f), folder)
                  for root, _, names in os.walk(folder) for f in names)


def test_first_download_then_cache_hit_without_network(server, tmp_path, capsys):
    cache = tmp_path / "cache"
    path = get_file("data.bin", origin=server.url + "data.bin", file_hash=SHA256,
                    cache_dir=str(cache))
    assert path == str(cache / "datasets" / "data.bin")
    with open(path, "rb") as f:
        assert f.read() == PAYLOAD
    assert cache_files(cache) == ["datasets/data.bin"]      # no temporary left
    err = capsys.readouterr().err
    assert f"Downloading data from {server.url}data.bin" in err
    assert "300000/300000" in err                           # the progress bar, on stderr
    assert len(server.requests) == 1

    server.stop()           # a cache hit with the right hash never touches the network
    assert get_file("data.bin", server.url + "data.bin", file_hash=SHA256,
                    cache_dir=cache) == path
    assert get_file("data.bin", server.url + "data.bin", file_hash=MD5,       # auto: md5
                    cache_dir=cache) == path
    assert get_file("data.bin", server.url + "data.bin", md5_hash=MD5, cache_dir=cache) == path
    assert get_file("data.bin", server.url + "data.bin", cache_dir=cache) == path   # no hash


def test_fname_defaults_to_the_url_basename_and_force_download(server, tmp_path):
    path = get_file(origin=server.url + "data.bin", cache_dir=tmp_path, cache_subdir="models")
    assert path == str(tmp_path / "models" / "data.bin")
    get_file(origin=server.url + "data.bin", cache_dir=tmp_path, cache_subdir="models")
    assert len(server.requests) == 1
    get_file(origin=server.url + "data.bin", cache_dir=tmp_path, cache_subdir="models",
             force_download=True)
    assert len(server.requests) == 2


def test_absolute_cache_subdir_is_used_as_it_is(server, tmp_path):
    target = tmp_path / "elsewhere"
    path = get_file("x.bin", server.url + "data.bin", cache_dir=tmp_path / "c",
                    cache_subdir=str(target))
    assert path == str(target / "x.bin")


def test_wrong_hash_raises_naming_both_hashes_and_leaves_nothing(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ValueError) as info:
        get_file("data.bin", server.url + "data.bin", file_hash=wrong, cache_dir=tmp_path)
    msg = str(info.value)
    assert wrong in msg and SHA256 in msg and "sha256" in msg
    assert cache_files(tmp_path) == []
    with pytest.raises(ValueError, match=MD5):      # a 32-digit hash is taken for md5
        get_file("data.bin", server.url + "data.bin", file_hash="f" * 32, cache_dir=tmp_path)
    assert cache_files(tmp_path) == []


def test_a_stale_cached_file_is_downloaded_again(server, tmp_path, capsys):
    folder = tmp_path / "datasets"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"truncated")
    path = get_file("data.bin", server.url + "data.bin", file_hash=SHA256, cache_dir=tmp_path)
    assert open(path, "rb").read() == PAYLOAD
    assert "will re-download" in capsys.readouterr().err
    assert cache_files(tmp_path) == ["datasets/data.bin"]


def test_server_down_names_the_url_and_where_to_put_the_file(server, tmp_path):
    url = server.url + "data.bin"
    server.stop()
    expected_path = str(tmp_path / "models" / "data.bin")
    with pytest.raises(downloads.DownloadError) as info:
        get_file("data.bin", url, file_hash=SHA256, cache_subdir="models", cache_dir=tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, OSError)
    assert f"URL fetch failure on {url}" in msg
    assert f"place it at {expected_path}" in msg and SHA256 in msg
    assert cache_files(tmp_path) == []


def test_http_error_is_reported_with_its_status(server, tmp_path):
    with pytest.raises(downloads.DownloadError, match="404 -- Not Found"):
        get_file("missing.bin", server.url + "missing.bin", cache_dir=tmp_path)
    assert cache_files(tmp_path) == []


def test_keras_home_is_honoured(server, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    path = get_file("data.bin", server.url + "data.bin", cache_subdir="models")
    assert path == str(tmp_path / "kh" / "models" / "data.bin")
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    assert downloads.keras_home() == str(tmp_path / "home" / ".keras")


def test_unwritable_cache_dir_falls_back_to_tmp_keras(server, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    fallback = tmp_path / "tmp" / ".keras"
    real_access = os.access
    monkeypatch.setattr(downloads.os, "access",
                        lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    monkeypatch.setattr(downloads, "_tmp_keras_dir", lambda: str(fallback))
    path = get_file("data.bin", server.url + "data.bin", cache_dir=str(locked))
    assert path == str(fallback / "datasets" / "data.bin")


def test_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(ValueError, match='"origin"'):
        get_file("a.bin")
    with pytest.raises(ValueError, match="fname"):
        get_file("sub/a.bin", "http://127.0.0.1:9/a.bin")
    with pytest.raises(ValueError, match="fname"):
        get_file(origin="http://127.0.0.1:9/")
    with pytest.raises(ValueError, match="hash_algorithm"):
        get_file("a.bin", "http://127.0.0.1:9/a.bin", file_hash="0" * 64, hash_algorithm="sha1")
    assert cache_files(tmp_path) == [] and os.listdir(tmp_path) == []     # nothing created


def _tar_gz(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


ARCHIVE = {"pkg/a.txt": b"alpha", "pkg/sub/b.txt": b"beta"}


@pytest.mark.parametrize("fname,origin,untar", [
    ("data.tar.gz", "data.tar.gz", False),    # a name with a dot: <stem>_extracted beside it
    ("mydata", "data.zip", False),            # a name without: <name>, archive <name>_archive
    (None, "data.zip", False),                # from the URL: the same, with the URL's name
    ("legacy", "data.tar.gz", True),          # untar=True: tar only
])
def test_extract_layout_and_content(server, tmp_path, fname, origin, untar):
    server.files.update({"data.tar.gz": _tar_gz(ARCHIVE), "data.zip": _zip(ARCHIVE)})
    kw = {"untar": True} if untar else {"extract": True}
    out = get_file(fname, server.url + origin, cache_dir=tmp_path, **kw)
    assert open(os.path.join(out, "pkg", "sub", "b.txt"), "rb").read() == b"beta"
    layout = cache_files(tmp_path)
    keras = _keras_or_none()
    if keras is not None:       # the same files at the same places as Keras's get_file
        theirs = tmp_path / "keras"
        theirs.mkdir()      # Keras falls back to /tmp/.keras for a cache_dir that is missing
        ref = keras.utils.get_file(fname, server.url + origin, cache_dir=str(theirs), **kw)
        assert os.path.relpath(ref, theirs) == os.path.relpath(out, tmp_path)
        assert cache_files(theirs) == [p for p in layout if not p.startswith("keras")]
    else:
        assert os.path.relpath(out, tmp_path) == {
            "data.tar.gz": "datasets/data_extracted", "mydata": "datasets/mydata",
            None: "datasets/data.zip", "legacy": "datasets/legacy"}[fname]


def test_extract_skips_members_outside_the_folder(server, tmp_path):
    server.files["evil.tar.gz"] = _tar_gz({"ok.txt": b"fine", "../escaped.txt": b"bad"})
    with pytest.warns(UserWarning, match="escaped.txt"):
        out = get_file("evil.tar.gz", server.url + "evil.tar.gz", cache_dir=tmp_path,
                       extract=True)
    assert os.listdir(out) == ["ok.txt"]
    assert not (tmp_path / "datasets" / "escaped.txt").exists()


def test_extract_of_a_non_archive_warns_and_keeps_the_file(server, tmp_path):
    with pytest.warns(UserWarning, match="Could not extract archive"):
        out = get_file("data.bin", server.url + "data.bin", cache_dir=tmp_path, extract=True)
    assert out == str(tmp_path / "datasets" / "data_extracted")
    assert (tmp_path / "datasets" / "data.bin").read_bytes() == PAYLOAD
    with pytest.raises(ValueError, match="archive_format"):
        get_file("data.bin", server.url + "data.bin", cache_dir=tmp_path, extract=True,
                 archive_format="rar")


def _keras_or_none():
    try:
        import keras
    except ImportError:
        return None
    return keras
