"""Object storage: data prep uploads shards to S3 as it writes them, training reads them back into a local cache.

Against a real S3 API: moto's server, started here as a child process on 127.0.0.1 with S3_ENDPOINT_URL pointing
at it and dummy credentials, so a test can SIGKILL it as an outage would and start it again on the same port.
moto keeps buckets in memory only: a restarted server gets the same objects uploaded again.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import torch
from composer.core import Callback
from streaming import LocalDataset, MDSWriter

from mosaicbert import train as training
from mosaicbert.config import LoaderConfig, load_config
from mosaicbert.data import cli as prep_cli
from mosaicbert.data import prep
from mosaicbert.data.remote import RemoteDataNotFound, RemoteError, ShardWriter
from mosaicbert.data.text_dataset import build_mlm_dataloader
from mosaicbert.errors import UserError
from mosaicbert.train import train as run_training

from conftest import DEMO_YAML, tiny_overrides
from helpers.data import write_c4_files
from helpers import free_port
from helpers.training import checkpoint_weights


class MotoServer:
    """moto's S3 server as a child process on 127.0.0.1; `kill` is SIGKILL, `start` again takes the same port."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                                         "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on port {self.port}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture(scope="module")
def moto_server():
    server = MotoServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Dummy credentials and a region from the environment only: no profile files, no instance metadata
    service, no proxy, so nothing but 127.0.0.1 is ever asked."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "HTTP_PROXY",
                "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}.items():
        monkeypatch.setenv(key, value)


_buckets = itertools.count()


@dataclass
class Bucket:
    server: MotoServer
    name: str

    def url(self, prefix: str) -> str:
        return f"s3://{self.name}/{prefix}"

    @functools.cached_property
    def client(self):
        return boto3.client("s3", endpoint_url=self.server.url)

    def create(self) -> None:
        self.client.create_bucket(Bucket=self.name)

    def objects(self, prefix: str) -> dict[str, bytes]:
        """{file name: contents} of the objects under `prefix/`."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=f"{prefix}/")
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        return {key[len(prefix) + 1:]: self.client.get_object(Bucket=self.name, Key=key)["Body"].read() for key in keys}

    def upload_folder(self, folder: Path, prefix: str) -> None:
        for path in folder.iterdir():
            self.client.upload_file(str(path), self.name, f"{prefix}/{path.name}")


@pytest.fixture
def s3(moto_server, aws_env, monkeypatch):
    """A new bucket on the running moto server (restarted if a test killed it), S3_ENDPOINT_URL pointing there."""
    if not moto_server.running:
        moto_server.start()
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_server.url)
    bucket = Bucket(moto_server, f"test-{next(_buckets)}")
    bucket.create()
    return bucket


def test_prep_uploads_every_split_and_an_existing_remote_split_is_kept(s3, tmp_path):
    write_c4_files(tmp_path / "c4raw")
    remote = s3.url("c4")
    args = ["c4", "--local-dir", str(tmp_path / "c4raw"), "--splits", "train", "val", "--out-root",
            str(tmp_path / "out"), "--remote", remote]
    assert prep_cli.main(args) == {"train": 30, "val": 12}
    for split in ("train", "val"):
        local = {path.name: path.read_bytes() for path in (tmp_path / "out" / split).iterdir()}
        assert {"index.json", "shard.00000.mds", prep.PREP_INFO} <= local.keys()
        assert s3.objects(f"c4/{split}") == local  # shards, index and prep info, byte for byte; the local copy kept

    # The remote split is found without a local copy: kept with --skip-existing, an error without a flag.
    shutil.rmtree(tmp_path / "out")
    assert prep_cli.main([*args, "--skip-existing"]) == {}
    with pytest.raises(UserError, match=re.escape(f"{remote}/train already exists; pass --overwrite")):
        prep_cli.main(args)
    assert not (tmp_path / "out" / "train").exists()
    assert prep_cli.main([*args, "--overwrite"]) == {"train": 30, "val": 12}
    with pytest.raises(RemoteError, match=r"could not upload to s3://no-such-bucket/c4/train at .*HeadBucket.*"
                                          r"and that the bucket exists"):
        prep_cli.main([*args[:-1], "s3://no-such-bucket/c4", "--out-root", str(tmp_path / "elsewhere")])


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def documents(n: int) -> list[dict[str, str]]:
    return [{"text": f"document {i}: " + "words and more words " * 10} for i in range(n)]


def uploading_split(s3, tmp_path: Path, count: int, shards: int) -> prep.StagedSplit:
    """A train split being written to s3://.../corpus, once `shards` of its shards are uploaded."""
    staged = prep.StagedSplit(tmp_path / "out", "train", {"text": "str"}, remote=s3.url("corpus"), size_limit=1000)
    for sample in documents(count):
        staged.write(sample)
    wait_for(lambda: len(s3.objects("corpus/train")) >= shards, f"{shards} shard(s) to be uploaded")
    return staged


def test_interrupted_prep_leaves_no_remote_index_and_the_split_reads_as_missing(s3, tmp_path):
    remote = s3.url("corpus")
    staged = uploading_split(s3, tmp_path, count=40, shards=2)
    staged.abandon()  # what write_split and write_corpus do on any exception (Ctrl-C, a bad document)

    time.sleep(0.5)  # uploads still in flight when it stopped may land: index.json must not
    assert "index.json" not in s3.objects("corpus/train")
    assert not (tmp_path / "out" / "train").exists()
    with pytest.raises(RemoteDataNotFound, match=re.escape(f"no MDS dataset at {remote}/train (index.json not found")):
        build_mlm_dataloader(LoaderConfig(split="train", local=str(tmp_path / "cache"), remote=remote),
                             tokenizer=None, max_seq_len=64, device_batch_size=8, seed=0)
    # Not a split that exists: the next prep writes it without --overwrite.
    assert prep.existing_split(tmp_path / "out", "train", remote) is None
    texts = [sample["text"] for sample in documents(40)]
    assert prep.write_split(tmp_path / "out", "train", texts, remote=remote) == 40
    assert "index.json" in s3.objects("corpus/train")


@pytest.mark.parametrize("writer_class", [MDSWriter, ShardWriter])
def test_index_is_uploaded_only_after_every_shard(writer_class, s3, tmp_path):
    """Streaming's writer uploads index.json once no upload is queued, while the last shard may still be
    uploading; here that upload then fails. MDSWriter's remote split then looks complete without the shard."""
    writer = writer_class(out=(str(tmp_path / "out"), s3.url("corpus/train")), columns={"text": "str"},
                          size_limit=1000, **({"keep_local": True} if writer_class is MDSWriter else {}))
    for sample in documents(10):
        writer.write(sample)
    last = f"shard.{len(writer.shards):05d}.mds"  # flushed by finish()
    upload = writer.cloud_writer.upload_file

    def last_shard_fails_slowly(name: str) -> None:
        if name == last:
            time.sleep(2)
            raise ConnectionError("connection reset by peer")
        upload(name)

    writer.cloud_writer.upload_file = last_shard_fails_slowly
    with pytest.raises(Exception) as failed:
        writer.finish()
    uploaded = s3.objects("corpus/train")
    assert last not in uploaded and "shard.00000.mds" in uploaded
    if writer_class is MDSWriter:
        assert "index.json" in uploaded  # the bug this class works around: a complete-looking, broken split
    else:
        assert "index.json" not in uploaded
        assert isinstance(failed.value, RemoteError)
        assert "ConnectionError: connection reset by peer" in str(failed.value)


def test_no_cache_folder_or_an_unreachable_endpoint_is_one_clear_error(aws_env, monkeypatch, tmp_path):
    with pytest.raises(UserError, match="data_remote s3://data/corpus needs data_local"):
        build_mlm_dataloader(LoaderConfig(split="train", remote="s3://data/corpus"), tokenizer=None, max_seq_len=64,
                             device_batch_size=8, seed=0)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("S3_ENDPOINT_URL", closed)
    with pytest.raises(RemoteError) as read:
        build_mlm_dataloader(LoaderConfig(split="train", local=str(tmp_path / "cache"), remote="s3://data/corpus"),
                             tokenizer=None, max_seq_len=64, device_batch_size=8, seed=0)
    message = str(read.value)
    assert message.startswith(f"could not download s3://data/corpus/train/index.json from {closed} "
                              "(EndpointConnectionError: ")
    assert "S3_ENDPOINT_URL" in message and "run the same command again" in message and "\n" not in message

    write_c4_files(tmp_path / "c4raw")
    with pytest.raises(RemoteError) as write:
        prep_cli.main(["c4", "--local-dir", str(tmp_path / "c4raw"), "--splits", "val", "--out-root",
                              str(tmp_path / "out"), "--remote", "s3://data/corpus"])
    assert str(write.value).startswith(f"could not upload to s3://data/corpus/val at {closed} (EndpointConnectionError")
    assert not (tmp_path / "out" / "val").exists()


def test_endpoint_dying_during_prep_stops_it_with_one_clear_error(s3, tmp_path):
    remote = s3.url("corpus")
    staged = uploading_split(s3, tmp_path, count=8, shards=1)
    s3.server.kill()
    with pytest.raises(RemoteError, match=re.escape(f"could not upload to {remote}/train at {s3.server.url} (")):
        for sample in documents(2000):  # a failed upload stops the writing, at the latest when it finishes
            staged.write(sample)
        staged.commit({})
    staged.abandon()
    assert not (tmp_path / "out" / "train").exists()


# --------------------------------------------------------------------------- training (slow)

class KillServerAfter(Callback):
    """Kills the S3 server after batch `at`: the outage comes at the same step every time."""

    def __init__(self, at: int, server: MotoServer):
        self.at, self.server = at, server

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.at:
            self.server.kill()


def write_small_shards(root: Path, remote: str, sample_root: Path) -> None:
    """Part of the sample corpus in small shards (a few documents each), uploaded as they are written."""
    for split, docs, size_limit in (("train", 160, 2048), ("val_small", 32, 1 << 20)):
        texts = [sample["text"] for sample, _ in zip(LocalDataset(str(sample_root / split)), range(docs))]
        staged = prep.StagedSplit(root, split, {"text": "str"}, remote=remote, size_limit=size_limit)
        for text in texts:
            staged.write({"text": text})
        staged.commit({"split": split})


@pytest.mark.slow
def test_training_from_s3_fails_clearly_when_the_endpoint_dies_and_resumes_losing_nothing(clean_env, s3, sample_root,
                                                                                          tmp_path, monkeypatch, capfd):
    remote, written = s3.url("corpus"), tmp_path / "written"
    write_small_shards(written, remote, sample_root)
    assert len(json.loads((written / "train" / "index.json").read_text())["shards"]) > 30
    # In order (no shuffle) and 16 samples downloaded ahead: after batch 4 of 8, batches 7 and 8 need shards
    # that are not in the cache yet, whatever the worker has prefetched.
    settings = {"tokenizer_name": sample_root / "tokenizer", "max_duration": "8ba", "save_interval": "4ba",
                "eval_interval": "8ba", "autoresume": True, "train_loader.shuffle": False,
                "train_loader.num_workers": 1, "train_loader.predownload": 16}
    # The reference: the same run on the prep's local copy of the shards, read in place.
    reference = run_training(load_config(DEMO_YAML, tiny_overrides(written, tmp_path / "reference", **settings)))

    # The training entry point (`main`, as src/main.py calls it), with the server killed after batch 4.
    overrides = tiny_overrides(tmp_path / "cache", tmp_path / "run", data_remote=remote, **settings)
    monkeypatch.setattr(training, "train", lambda config: run_training(config, [KillServerAfter(4, s3.server)]))
    capfd.readouterr()
    assert training.main([str(DEMO_YAML), *overrides]) == 2
    stderr = capfd.readouterr().err  # the DataLoader worker's too: it writes to the same file descriptor
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.count("could not download") == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert re.match(rf"error: could not download {remote}/train/shard\.\d{{5}}\.mds from {s3.server.url} \(", errors[0])
    assert "S3_ENDPOINT_URL" in errors[0] and "run the same command again" in errors[0]

    # The cache holds complete shards only, under their own names: no partial download looks like a shard.
    cache = tmp_path / "cache" / "train"
    index = json.loads((cache / "index.json").read_text())
    sizes = {shard["raw_data"]["basename"]: shard["raw_data"]["bytes"] for shard in index["shards"]}
    cached = {path.name: path.stat() for path in cache.iterdir() if path.name != "index.json"}
    assert 0 < len(cached) < len(sizes)
    assert {name: stat.st_size for name, stat in cached.items()} == {name: sizes[name] for name in cached}

    # The endpoint is back with the same objects; the same command continues from the checkpoint at batch 4.
    s3.server.start()
    s3.create()
    for split in ("train", "val_small"):
        s3.upload_folder(written / split, f"corpus/{split}")
    resumed = run_training(load_config(DEMO_YAML, overrides))
    assert resumed["batches"] == reference["batches"] == 8 and resumed["batches_this_run"] == 4
    for name, stat in cached.items():  # shards already in the cache were used, not downloaded again
        assert (cache / name).stat().st_mtime_ns == stat.st_mtime_ns and (cache / name).stat().st_ino == stat.st_ino
    a, b = checkpoint_weights(reference["checkpoint"]), checkpoint_weights(resumed["checkpoint"])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
