"""Hot reload: the holder of the model being served, which swaps in a new one when its files change.

The files are polled every ``reload_interval`` seconds; a change must hold still for one more poll
so a file being copied is never loaded half-written. The new model is loaded in a background
thread and swapped in one assignment: requests already started finish on the model they began with.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from vitrina.serving.model import LoadedModel, files_fingerprint, load_model, model_files
from vitrina.serving.settings import ServeSettings

log = logging.getLogger("uvicorn.error").getChild("vitrina")


class ModelHolder:
    """The model being served; ``watch()`` reloads it in the background when its files change."""

    def __init__(self, settings: ServeSettings, on_reload: Callable[[str], None]):
        self.settings = settings
        self.files = model_files(Path(settings.model))
        self.current: LoadedModel | None = None
        self._on_reload = on_reload

    def load(self) -> LoadedModel:
        self.current = load_model(self.settings)
        return self.current

    async def watch(self) -> None:
        """Poll the model files; load a changed model once it stopped changing, then swap it in."""
        interval = self.settings.reload_interval
        settled = self.current.fingerprint if self.current else None
        candidate = None
        while True:
            await asyncio.sleep(interval)
            stamp = files_fingerprint(self.files)
            if stamp == settled or None in stamp:
                candidate = None
                continue
            if stamp != candidate:  # changed since the last look: maybe still being written
                candidate = stamp
                continue
            settled, candidate = stamp, None
            try:
                model = await asyncio.to_thread(load_model, self.settings)
            except Exception as exc:  # noqa: BLE001 - a broken new file must never stop the server
                log.error("model files changed but the new model cannot be loaded; still serving %s: %s",
                          self.current.version if self.current else "nothing", exc)
                self._on_reload("failed")
                continue
            previous, self.current = self.current, model
            log.info("model reloaded: version %s -> %s", previous.version if previous else "none", model.version)
            self._on_reload("loaded")
