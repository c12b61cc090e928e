import io
import pickle
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fakedata import CLASSES, class_images, make_cifar10_archive, make_cifar100_archive, make_imagefolder_archive, md5
from kdistill.errors import DataError
from kdistill.sources.cifar import read_cifar10, read_cifar100
from kdistill.sources.dataset import ImageDataset
from kdistill.sources.fetch import fetch
from kdistill.sources.imagefolder import read_imagefolder
from kdistill.sources.prepare import prepare


def test_fetch_over_http_verifies_and_does_not_fetch_again(file_server, cifar_archive, tmp_path):
    archive, digest = cifar_archive
    (file_server.directory / archive.name).write_bytes(archive.read_bytes())
    destination = tmp_path / "raw" / archive.name
    fetch(file_server.url(archive.name), destination, digest)
    assert md5(destination) == digest and len(file_server.requests) == 1
    fetch(file_server.url(archive.name), destination, digest)
    assert len(file_server.requests) == 1, "an archive already present with the right md5 was fetched again"


def test_wrong_md5_names_both_sums_and_leaves_nothing(file_server, cifar_archive, tmp_path):
    archive, digest = cifar_archive
    (file_server.directory / archive.name).write_bytes(archive.read_bytes())
    destination = tmp_path / "raw" / archive.name
    wrong = "0" * 32
    with pytest.raises(DataError) as error:
        fetch(file_server.url(archive.name), destination, wrong)
    assert wrong in str(error.value) and digest in str(error.value)
    assert list(destination.parent.iterdir()) == []


def test_local_paths_and_file_urls_work(cifar_archive, tmp_path):
    archive, digest = cifar_archive
    fetch(str(archive), tmp_path / "a" / archive.name, digest)
    fetch(archive.as_uri(), tmp_path / "b" / archive.name, digest)
    assert md5(tmp_path / "a" / archive.name) == md5(tmp_path / "b" / archive.name) == digest


def test_unreachable_url_fails_quickly_with_a_clear_message(tmp_path):
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(DataError, match=f"cannot download http://127.0.0.1:{port}/x.tar.gz after 3 attempts"):
        fetch(f"http://127.0.0.1:{port}/x.tar.gz", tmp_path / "x.tar.gz", "0" * 32, backoff=0.1)
    assert time.monotonic() - started < 60
    assert not (tmp_path / "x.tar.gz").exists()


def test_http_404_is_not_retried(file_server, tmp_path):
    with pytest.raises(DataError, match="404"):
        fetch(file_server.url("missing.tar.gz"), tmp_path / "m.tar.gz", "0" * 32)
    assert len(file_server.requests) == 1


def test_cifar10_layout_is_read_exactly(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    make_cifar10_archive(path, per_batch=7, test=9, seed=3)
    dataset = read_cifar10(path)
    assert tuple(dataset.train_images.shape) == (35, 3, 32, 32) and dataset.train_images.dtype == torch.uint8
    assert tuple(dataset.test_images.shape) == (9, 3, 32, 32) and dataset.classes == CLASSES
    # Re-derive batch 1 the way the generator wrote it: rows are R, G, B planes of 32x32.
    with tarfile.open(path) as tar:
        entry = pickle.loads(tar.extractfile("cifar-10-batches-py/data_batch_1").read())
    assert np.array_equal(dataset.train_images[:7].numpy().reshape(7, 3072), entry["data"])
    assert dataset.train_labels[:7].tolist() == entry["labels"]


def test_cifar100_layout_is_read_with_its_fine_labels(tmp_path):
    path = tmp_path / "cifar-100-python.tar.gz"
    make_cifar100_archive(path, train=130, test=40, seed=2)
    dataset = read_cifar100(path)
    with tarfile.open(path) as tar:
        entry = pickle.loads(tar.extractfile("cifar-100-python/train").read())
    assert tuple(dataset.train_images.shape) == (130, 3, 32, 32) and len(dataset.test_labels) == 40
    assert np.array_equal(dataset.train_images.numpy().reshape(130, 3072), entry["data"])
    assert dataset.train_labels.tolist() == entry["fine_labels"] != entry["coarse_labels"]
    assert dataset.classes == [f"fine_{i}" for i in range(100)]
    dataset.validate()
    with pytest.raises(DataError, match=r"data.format cifar100: expected cifar-100-python/\{train, test, meta\}"):
        read_cifar100(tmp_path.joinpath("c.tar.gz") if make_cifar10_archive(tmp_path / "c.tar.gz") else None)


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_imagefolder_archives_are_read_and_resized(tmp_path, suffix):
    path = tmp_path / f"images{suffix}"
    make_imagefolder_archive(path, train=30, test=10, size=48)
    dataset = read_imagefolder(path)
    assert tuple(dataset.train_images.shape) == (30, 3, 32, 32) and len(dataset.test_labels) == 10
    assert dataset.classes == sorted(CLASSES)
    dataset.validate()


def test_prepare_writes_the_dataset_atomically(cifar_archive, tmp_path):
    archive, digest = cifar_archive
    output = tmp_path / "data" / "dataset.pt"
    prepare(str(archive), digest, "cifar10", tmp_path / "raw", output)
    loaded = ImageDataset.load(output)
    assert len(loaded.train_labels) == 200 and loaded.classes == CLASSES
    assert loaded.digests == {split: loaded.digest(split) for split in ("train", "test")}  # recorded, and right
    assert [p.name for p in output.parent.iterdir()] == ["dataset.pt"]


def test_the_dataset_digest_covers_every_image_and_label(cifar_archive, tmp_path):
    archive, _ = cifar_archive
    dataset = read_cifar10(archive)
    digest = dataset.digest("train")
    assert digest == read_cifar10(archive).digest("train") != dataset.digest("test")
    dataset.train_images[-1, 2, 31, 31] ^= 1  # the last pixel of the last image
    assert dataset.digest("train") != digest
    dataset.train_images[-1, 2, 31, 31] ^= 1
    dataset.train_labels[-1] = (dataset.train_labels[-1] + 1) % 10
    assert dataset.digest("train") != digest


def test_wrong_layout_says_what_was_expected(tmp_path):
    path = tmp_path / "images.tar.gz"
    make_imagefolder_archive(path, train=10, test=10)
    expected = r"data.format cifar10: expected cifar-10-batches-py/\{data_batch_1, .*data_batch_5, test_batch, batches.meta\}"
    with pytest.raises(DataError, match=expected):
        read_cifar10(path)
    with pytest.raises(DataError, match=r"expected images under train/<class>/ and test/<class>/"):
        read_imagefolder(tmp_path.joinpath("c.tar.gz") if make_cifar10_archive(tmp_path / "c.tar.gz") else None)


def test_truncated_archive_is_a_clear_error(cifar_archive, tmp_path):
    archive, _ = cifar_archive
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="unreadable or truncated archive"):
        read_cifar10(truncated)


def _tar_with(path: Path, info: tarfile.TarInfo, payload: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(info, io.BytesIO(payload) if payload else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size
    return info


@pytest.mark.parametrize(
    ("info", "reason"),
    [
        (_member("/etc/passwd", size=1), "absolute path"),
        (_member("train/cat/../../../escape.jpg", size=1), "'..' in path"),
        (_member("train/cat/link.jpg", tarfile.SYMTYPE, "../../../../etc/passwd"), "leaves the archive"),
        (_member("train/cat/hard.jpg", tarfile.LNKTYPE, "/etc/shadow"), "leaves the archive"),
        (_member("train/cat/dev", tarfile.CHRTYPE), "device or fifo"),
        (_member("train/cat/fifo", tarfile.FIFOTYPE), "device or fifo"),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path, info, reason):
    path = _tar_with(tmp_path / "evil.tar.gz", info, b"x" * info.size)
    with pytest.raises(DataError, match=reason):
        read_imagefolder(path)


@pytest.mark.parametrize(("name", "mode", "reason"), [
    ("../escape.jpg", 0o100644, "'..' in path"),
    ("/abs.jpg", 0o100644, "absolute path"),
    ("train/cat/link.jpg", 0o120777, "symbolic link"),
])
def test_unsafe_zip_members_are_refused(tmp_path, name, mode, reason):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        zf.writestr(info, b"/etc/passwd")
    with pytest.raises(DataError, match=reason):
        read_imagefolder(path)


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "cifar-10-python.tar.gz"
    labels = np.arange(4) % 10
    good = pickle.dumps({"data": class_images(labels, np.random.default_rng(0)).reshape(4, -1), "labels": labels.tolist()})
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            payload = pickle.dumps({"label_names": Exploit()}) if name == "batches.meta" else good
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match="refused to load builtins.print"):
        read_cifar10(path)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.server
def test_a_connection_dropped_mid_download_is_retried(cifar_archive, tmp_path):
    import http.server
    import threading

    archive, digest = cifar_archive
    payload = archive.read_bytes()
    requests = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            # the first answer breaks off halfway, as a dropped connection does
            self.wfile.write(payload if len(requests) > 1 else payload[: len(payload) // 2])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        destination = tmp_path / "raw" / archive.name
        fetch(f"http://127.0.0.1:{server.server_address[1]}/{archive.name}", destination, digest, backoff=0.1)
    finally:
        server.shutdown()
        server.server_close()
    assert len(requests) == 2 and md5(destination) == digest
    assert [p.name for p in destination.parent.iterdir()] == [archive.name]
