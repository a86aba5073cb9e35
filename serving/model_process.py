"""A research model served from its own process, behind the same `ServingModel` interface.

Why a process: the incremental encoder makes a few hundred small torch calls per micro-batch, and
each gives the GIL back and takes it again. In a worker whose event loop and Kafka consumer thread
also want the GIL, every retake waits for the holder's switch interval: measured on ml-100k with a
MUFASA checkpoint, the encode stage ran 8-20x slower inside the worker than the same code alone
(docs/operations.md, "Hot path"). In its own process the model has its own GIL and its own core.

The parent keeps everything else (state stores, FAISS index, Kafka); per call it sends plain
arrays and lists through a pipe:
- `encode_items(records)` -> item vectors; modality weights come back with them, so
  `modality_weights` is answered locally;
- `encode_users(histories, item_matrix, explain, changed_rows)`: the child keeps its own copy of
  the item matrix; only rows that changed since the last call are sent (the rows the recommender
  says it wrote, or, when it does not say, the rows that differ from the copy last sent).
One call at a time (the worker's compute thread is the only caller). If the child dies, that is
the worker dying in the batch it was handling: `on_death` is called (the worker leaves for a
restart, and the batch journal names the batch in flight as the suspect).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamrec.serving.serving_model import UserEncoding, UserHistory
from streamrec.stream.schemas import CatalogueRecord

if TYPE_CHECKING:
    # Only a type here: the research model's code (torch, checkpoints) loads in the child.
    from streamrec.models.cold_start import ColdStartConfig
    from streamrec.serving.research_model import ResearchServingConfig


@dataclass(frozen=True)
class ModelProcessSpec:
    """What the child needs to open the model itself (nothing heavy crosses the pipe)."""

    checkpoint: Path
    data_dir: Path
    features_dir: Path
    serving: ResearchServingConfig
    torch_threads: int = 1


class ModelProcessError(RuntimeError):
    """The child raised while handling a call (the call's input is at fault, not the process)."""


def _context() -> mp.context.ForkServerContext:
    """Children are forked from a fork server that imported torch and the serving code once: the
    first model process pays the imports (about 2 s), later ones (hot swaps) only load their
    checkpoint. The server is a fresh interpreter, so no torch threads or locks are forked."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "streamrec.serving.research_model"])
    return ctx


class ProcessServingModel:
    """`ServingModel` whose research model runs in a child process (see the module docstring)."""

    def __init__(self, spec: ModelProcessSpec, on_death: Callable[[str], None]) -> None:
        self.spec = spec
        self.on_death = on_death
        ctx = _context()
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=serve, args=(child_conn, spec), name="streamrec-model", daemon=True)
        self._proc.start()
        child_conn.close()
        try:
            self._version, self._dim, self._cold, self._window = self._call("hello")
        except Exception:
            self.close()  # the checkpoint did not load: raised to whoever asked for the model
            raise
        self._weights: dict[str, dict[str, float]] = {}
        self._sent: np.ndarray | None = None  # (R, D): the item matrix as the child has it

    @property
    def version(self) -> str:
        return self._version

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def cold_start(self) -> ColdStartConfig:
        return self._cold

    def placed_by_content(self, item_ids: list[str]) -> list[bool]:
        return list(self._call("placed_by_content", item_ids))

    def trained_clicks(self, item_ids: list[str]) -> list[int]:
        return list(self._call("trained_clicks", item_ids))

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _call(self, method: str, *args: Any) -> Any:
        try:
            self._conn.send((method, args))
            status, value = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            code = self._proc.exitcode if not self._proc.is_alive() else None
            why = f"the model process (pid {self._proc.pid}) died during {method!r}: exit code {code} ({exc!r})"
            self.on_death(why)
            raise ModelProcessError(why) from exc
        if status == "exc":
            raise value
        if status == "err":
            raise ModelProcessError(value)
        return value

    def encode_items(self, records: list[CatalogueRecord]) -> np.ndarray:
        vecs, weights = self._call("encode_items", records)
        self._weights.update(weights)
        return vecs

    def encode_users(
        self,
        histories: list[UserHistory],
        item_matrix: np.ndarray,
        explain: bool,
        changed_rows: np.ndarray | None = None,
    ) -> UserEncoding:
        changed = self._matrix_update(item_matrix, changed_rows)
        # The child reads at most its encoder window of each history: only that crosses the pipe
        # (a history holds up to the sequence cap, 2,048 rows; MUFASA's window is 50-200).
        n = self._window
        sent = [h if len(h.rows) <= n else UserHistory(h.user_id, h.rows[-n:], h.total) for h in histories]
        vectors, because = self._call("encode_users", sent, changed, explain)
        return UserEncoding(vectors, because)

    def _matrix_update(
        self, item_matrix: np.ndarray, changed_rows: np.ndarray | None
    ) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(rows of the matrix, changed row numbers, their vectors), or None when nothing changed.

        With `changed_rows` (the caller's record of what it wrote) nothing is compared: comparing
        the whole matrix took 8-10% of the compute thread's time per micro-batch (Beauty, 12,000
        rows). Without it, the matrix is compared with the copy last sent."""
        sent = self._sent
        if sent is None or sent.shape[1] != item_matrix.shape[1]:
            self._sent = item_matrix.copy()
            return len(item_matrix), np.arange(len(item_matrix)), item_matrix
        n = min(len(sent), len(item_matrix))
        if changed_rows is None:
            differs = np.flatnonzero(np.any(sent[:n] != item_matrix[:n], axis=1))
        else:
            differs = changed_rows[changed_rows < n]
        rows = np.concatenate([differs, np.arange(n, len(item_matrix))]).astype(np.int64)
        if len(sent) != len(item_matrix):
            grown = np.zeros_like(item_matrix)
            grown[:n] = sent[:n]
            self._sent = sent = grown
        elif not len(rows):
            return None
        sent[rows] = item_matrix[rows]
        return len(item_matrix), rows, item_matrix[rows]

    def modality_weights(self, item_id: str) -> dict[str, float] | None:
        return self._weights.get(item_id)

    @property
    def history_window(self) -> int:
        return self._window

    def state_bytes_per_user(self, length: int) -> int:
        return int(self._call("state_bytes_per_user", length))

    def close(self) -> None:
        """Stop the child (a swapped-out model, or the worker stopping)."""
        if self._proc.is_alive():
            try:
                self._conn.send(("stop", ()))
            except OSError:
                pass
            self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
        self._conn.close()


def serve(conn: Connection, spec: ModelProcessSpec) -> None:
    """The child: open the model, then answer calls until told to stop or the parent goes away."""
    import torch

    from streamrec.serving.research_model import load_research_model

    torch.set_num_threads(max(1, spec.torch_threads))
    try:
        model = load_research_model(spec.checkpoint, spec.data_dir, spec.features_dir, spec.serving)
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it where the model is loaded
        conn.recv()  # the parent's first call
        try:
            conn.send(("exc", exc))
        except Exception:  # noqa: BLE001 - an exception that does not pickle goes as text
            conn.send(("err", f"{type(exc).__name__}: {exc}"))
        return
    matrix = np.zeros((0, model.dim), dtype=np.float32)  # (R, D) the parent's item matrix, as last sent
    while True:
        try:
            method, args = conn.recv()
        except EOFError:
            return  # the parent is gone
        if method == "stop":
            return
        try:
            if method == "hello":
                result: Any = (model.version, model.dim, model.cold_start, model.max_len)
            elif method == "encode_items":
                (records,) = args
                vecs = model.encode_items(records)
                result = (vecs, {r.item_id: model.modality_weights(r.item_id) for r in records})
            elif method == "encode_users":
                histories, changed, explain = args
                if changed is not None:
                    n, rows, vecs = changed
                    if len(matrix) != n:
                        grown = np.zeros((n, model.dim), dtype=np.float32)
                        grown[: min(n, len(matrix))] = matrix[: min(n, len(matrix))]
                        matrix = grown
                    matrix[rows] = vecs
                encoding = model.encode_users(histories, matrix, explain)
                result = (encoding.vectors, encoding.because_rows)
            elif method == "placed_by_content":
                result = model.placed_by_content(*args)
            elif method == "trained_clicks":
                result = model.trained_clicks(*args)
            elif method == "state_bytes_per_user":
                result = model.state_bytes_per_user(*args)
            else:
                raise ValueError(f"unknown call {method!r}")
        except Exception as exc:  # noqa: BLE001 - sent back: the parent isolates the input that caused it
            conn.send(("err", f"{type(exc).__name__}: {str(exc)[:500]}"))
            continue
        conn.send(("ok", result))
