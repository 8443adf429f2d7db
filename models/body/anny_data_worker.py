"""Child process of `anny_data.build_anny_data`: builds anny's model data into the cache folder given
as the only argument, printing progress lines (`MARIONETTE-ANNY {"done": n}` out of 1000) on stdout.

Run as a script, so it imports nothing from Marionette. Around anny's own cache code it makes each
write atomic (temporary name, then rename), deletes a cache file that fails to load (a truncated file
from an older, interrupted build) and builds again once, removes the intermediate files (also those a
stopped build left; only the compact one is read later), and last writes the marker that
`anny_data_ready` checks.
"""
import importlib.metadata
import json
import logging
import os
import sys
from pathlib import Path

EVENT = "MARIONETTE-ANNY "
PARTIAL = ".partial"
MARKER = "marionette_anny_ready.json"
ANNY_KWARGS = {"skinning_method": "lbs"}   # as models/body/anny_model.py builds it (cache keys ignore it)
BLEND_SHAPES = 1136                         # targets anny 0.6 reads on a full build (progress only)
LOADING, SAVED = 900, 30                    # progress units for reading targets, then per file written


class CorruptCacheFile(Exception):
    pass


def emit(done: int) -> None:
    print(EVENT + json.dumps({"done": int(done)}), flush=True)


def instrument(saved: list, loaded: list) -> None:
    """Wraps anny's cache reads and writes (and counts target reads for the progress)."""
    from anny.models.model_data import ModelData
    save, load = ModelData.save_safetensors, ModelData.load_safetensors

    def atomic_save(self, path):
        path = Path(path)
        partial = path.with_name(path.name + PARTIAL)
        save(self, partial)
        os.replace(partial, path)
        saved.append(path)
        emit(min(LOADING + SAVED * len(saved), 990))

    def checked_load(cls, path):
        try:
            data = load(path)
        except Exception as e:  # safetensors raises several types for a truncated header or body
            logging.warning("removing unreadable anny cache file %s (%s)", path, e)
            Path(path).unlink(missing_ok=True)
            raise CorruptCacheFile(str(path)) from e
        loaded.append(Path(path))
        return data

    ModelData.save_safetensors = atomic_save
    ModelData.load_safetensors = classmethod(checked_load)
    try:
        import anny.models.full_model as full_model
    except ImportError:
        return
    read, count = full_model.load_blend_shape, [0]

    def counted(*args, **kwargs):
        count[0] += 1
        if count[0] % 12 == 0:
            emit(LOADING * min(count[0], BLEND_SHAPES) // BLEND_SHAPES)
        return read(*args, **kwargs)

    full_model.load_blend_shape = counted


def main(cache: Path) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    import anny
    saved, loaded = [], []
    instrument(saved, loaded)
    emit(0)
    for attempt in (1, 2):
        try:
            anny.Anny(**ANNY_KWARGS)
            break
        except CorruptCacheFile:
            if attempt == 2:
                raise
    final = saved[-1] if saved else loaded[-1]      # the outermost builder's file is written/read last
    for path in {*saved, *loaded} - {final}:        # intermediates, also those an earlier, stopped build left
        path.unlink(missing_ok=True)
    files = {final.resolve().relative_to(cache).as_posix(): final.stat().st_size}
    marker = cache / MARKER
    marker.with_name(MARKER + PARTIAL).write_text(json.dumps({"anny": importlib.metadata.version("anny"),
                                                              "files": files}), encoding="utf-8")
    os.replace(marker.with_name(MARKER + PARTIAL), marker)
    emit(1000)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
