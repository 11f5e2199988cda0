"""Datasets in an object store (`s3://bucket/prefix`, or another store Streaming supports).

Data prep uploads each split's shards as it writes them, and training downloads them into a local cache
(`data_local`). Streaming moves the files in background threads, and a failure there never reaches the
code that waits for it: concurrent.futures logs it with a traceback, an upload ends in "One of the threads
failed", and a training epoch just ends early. Here every failed transfer becomes one `RemoteError` that
names the file, the endpoint and the fix, raised where the prep or the training loop is waiting.

The S3 endpoint comes from `S3_ENDPOINT_URL` (unset: AWS), credentials from boto3's usual sources
(`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, instance roles).
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from streaming import MDSWriter, Stream, StreamingDataset
from streaming.base.storage.upload import UPLOADERS, CloudUploader

from mosaicbert.errors import DataNotFoundError, UserError

INDEX = "index.json"  # MDS writes it after every shard: a split without it is not complete


class RemoteError(UserError):
    """A transfer to or from the object store failed; the message names the file, the endpoint and the fix."""

    def __init__(self, message: str):
        # A DataLoader worker's exception reaches the training process rebuilt from its formatted traceback
        # ("Caught RemoteError in DataLoader worker process 0. Original Traceback ..."): keep our own line.
        if message.startswith("Caught ") and "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


class RemoteDataNotFound(RemoteError, DataNotFoundError):
    """The remote split (its index.json) is not there."""


def endpoint(url: str) -> str:
    if urllib.parse.urlparse(url).scheme == "s3":
        return os.environ.get("S3_ENDPOINT_URL") or "AWS S3 (S3_ENDPOINT_URL unset)"
    return f"{urllib.parse.urlparse(url).scheme}:// storage"


def _cause(err: BaseException) -> str:
    lines = str(err).strip().splitlines() or [""]
    return f"{err.__class__.__name__}: {lines[0][:300]}"


def _is_missing(err: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        return err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")
    return isinstance(err, FileNotFoundError)


def _check_access(url: str) -> str:
    credentials = ("S3_ENDPOINT_URL and the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
                   if urllib.parse.urlparse(url).scheme == "s3" else "the store's credentials")
    return f"Check that {endpoint(url)} is up and that {credentials} are right"


# --------------------------------------------------------------------------- training: downloads


class RemoteStream(Stream):
    """A Stream whose failed downloads raise `RemoteError`; the first is kept in `failure` for
    ReportsFailedDownloads, since a failure in Streaming's download threads only stops the epoch."""

    failure: str | None = None

    def __init__(self, *, remote: str, local: str | None, split: str):
        if local is None:  # Streaming would make a temporary folder, and refuse to reuse it on the next run
            raise UserError(f"data_remote {remote} needs data_local: the folder to cache its shards in, which a "
                            "rerun continues from (each node of a cluster has its own).")
        try:
            super().__init__(remote=remote, local=local, split=split)
        except ValueError as err:  # a scheme Streaming cannot download from
            raise UserError(f"data_remote {remote}: {err}; use s3://bucket/prefix (or gs://, oci://, azure://, "
                            "hf://, dbfs:/), or a local folder as data_local without data_remote.") from None

    def _download_file(self, from_basename: str, to_basename: str | None = None) -> str:
        try:
            return super()._download_file(from_basename, to_basename)
        except Exception as err:  # noqa: BLE001  (after Streaming's retries: every store and error means the same)
            url = f"{self.remote.rstrip('/')}/{self.split}/{from_basename}"
            if from_basename == INDEX and _is_missing(err):
                raise RemoteDataNotFound(
                    f"no MDS dataset at {os.path.dirname(url)} ({INDEX} not found at {endpoint(url)}). Upload one "
                    "with `python data_prep/convert_dataset.py ... --remote URL`, or fix data_remote (the dataset "
                    "root: splits are <data_remote>/<split>)."
                ) from None
            self.failure = self.failure or (
                f"could not download {url} from {endpoint(url)} ({_cause(err)}). {_check_access(url)}, "
                f"then run the same command again: the shards already in {os.path.join(self.local, self.split)} "
                "are kept (only complete files get their names), and a run with autoresume=true continues from "
                "its last checkpoint."
            )
            raise RemoteError(self.failure) from None


class ReportsFailedDownloads(StreamingDataset):
    """A StreamingDataset whose failed download (in a RemoteStream) is an error in the iterating process.

    Streaming downloads in two background threads. When one raises, the epoch's samples just stop (or the
    next one raises "Background thread failed"), and the end of the epoch waits forever for the dead thread
    to report that it has exited: with both threads dead (both were downloading when the endpoint died) the
    DataLoader worker hangs. Here a dead thread counts as exited and the epoch ends in its RemoteError."""

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from super().__iter__()
        except RuntimeError:
            self._raise_download_failure()
            raise
        self._raise_download_failure()

    def on_exception(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is not None and hasattr(self, "_iterator"):
            self._iterator.on_exit()  # the thread's epoch is still the current one: a new epoch first waits for it
        super().on_exception(future)

    def _raise_download_failure(self) -> None:
        for stream in self.streams:
            if getattr(stream, "failure", None):
                raise RemoteError(stream.failure)


class _DropReportedFailures(logging.Filter):
    """Streaming re-raises a download thread's error in the thread's done-callback, where concurrent.futures
    logs it with a traceback. A RemoteError is reported once, by the iterating thread: drop that record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], RemoteError))


logging.getLogger("concurrent.futures").addFilter(_DropReportedFailures())


# --------------------------------------------------------------------------- data prep: uploads


def check_remote_url(remote: str) -> None:
    scheme = urllib.parse.urlparse(remote).scheme
    if not scheme or scheme not in UPLOADERS:
        raise UserError(f"--remote {remote} is not an object-store URL; use s3://bucket/prefix (or gs://, oci://, "
                        "azure://, hf://, dbfs:/ ...).")


def remote_split_exists(remote_split: str) -> bool:
    """Whether `<remote_split>/index.json` exists: a complete split, as Streaming's uploader lists it."""
    check_remote_url(remote_split)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            # The uploader checks that the bucket exists; its local folder is not used.
            keys = CloudUploader.get((scratch, remote_split)).list_objects(INDEX) or []
        except Exception as err:  # noqa: BLE001
            raise _upload_error(remote_split, err) from None
    index = f"{urllib.parse.urlparse(remote_split).path.strip('/')}/{INDEX}".lstrip("/")
    return index in keys


def _upload_error(remote_split: str, err: BaseException) -> RemoteError:
    return RemoteError(
        f"could not upload to {remote_split} at {endpoint(remote_split)} ({_cause(err)}). "
        f"{_check_access(remote_split)} (and that the bucket exists), then run the same command "
        f"again: {remote_split}/{INDEX} was not written, so nothing reads the split there as complete."
    )


class ShardWriter(MDSWriter):
    """An MDSWriter (`out` a folder, or `(folder, remote)` to upload shards as they are written) that uploads
    index.json only after every shard is up, and turns a failed upload into one `RemoteError`.

    Streaming's own writer uploads index.json as soon as no upload is *queued*, while the last shards may still
    be uploading (or failing), and its `with` block writes index.json even when the block raised: either would
    make an incomplete remote split look complete. Call `finish()` only when every sample is written."""

    def __init__(self, *, out: str | tuple[str, str], **kwargs: Any):
        self.failure: RemoteError | None = None
        if isinstance(out, tuple):
            check_remote_url(out[1])
        try:
            super().__init__(out=out, keep_local=True, **kwargs)
        except (ValueError, TypeError):  # bad arguments (compression, size_limit)
            raise
        except Exception as err:  # noqa: BLE001  (the uploader's bucket check: unreachable, no bucket, denied)
            if not isinstance(out, tuple):
                raise
            raise _upload_error(out[1], err) from None

    def exception_callback(self, future: Future) -> None:
        """Upload threads report here; Streaming's version re-raises, which concurrent.futures only logs."""
        err = None if future.cancelled() else future.exception()
        if err is not None:
            self.failure = self.failure or _upload_error(self.remote, err)
            self.event.set()
            self.cancel_future_jobs()  # the split cannot be completed: the queued uploads would only fail too

    def write(self, sample: dict[str, Any]) -> None:
        try:
            super().write(sample)
        except Exception:  # "One of the threads failed", or a shard flushed to the stopped upload pool
            if self.failure is not None:
                raise self.failure from None
            raise

    def upload(self, basename: str) -> None:
        """Upload another file of the split's folder now (before `finish`, which uploads index.json last)."""
        if self.remote is not None:
            try:
                self.cloud_writer.upload_file(basename)
            except Exception as err:  # noqa: BLE001
                raise _upload_error(self.remote, err) from None

    def _write_index(self) -> None:  # Streaming 0.13.0's Writer calls it from finish() after the last flush
        self.executor.shutdown(wait=True)  # every shard uploaded (or failed) before index.json goes up
        self.executor = ThreadPoolExecutor(max_workers=1)
        if self.failure is None:
            super()._write_index()

    def finish(self) -> None:
        try:
            super().finish()
        except Exception:
            if self.failure is not None:
                raise self.failure from None
            raise

    def abandon(self) -> None:
        """Stop uploading (an interrupted write): pending uploads are cancelled and index.json is never written."""
        self.cancel_future_jobs()
