"""RUN_DIR/run_config.json: the model config and train config of a run, and how `--resume` uses them.

A resumed run starts from the saved TrainConfig; flags given on the command line override it, except
those that would change the model or the data order (FIXED_ON_RESUME, preset, --set, --init-hf): giving
one with a different value is an error naming it.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from ..io.json_codec import read_json_object, write_json
from ..io.run_dir import RUN_CONFIG
from .config import FIXED_ON_RESUME, TrainConfig

MODEL_DEFINING = ("preset", "overrides", "init_hf")


def write_run_config(run_dir: str | Path, train_config: TrainConfig, model_config: ModelConfig) -> None:
    train = {**train_config.to_dict(), "resume_from": None}  # an instruction for one resume, not a setting
    write_json(Path(run_dir) / RUN_CONFIG, {"model": model_config.to_dict(), "train": train})


def read_run_config(run_dir: str | Path) -> tuple[TrainConfig, ModelConfig] | None:
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    hint = (f"; each checkpoint's config.json holds the run's 'model' and 'train' settings: write those two "
            f"into {path} to repair it")
    try:
        data = read_json_object(path)
        return TrainConfig.from_dict(data["train"]), ModelConfig.from_dict(data["model"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a run config ({error}){hint}") from None
    except ValueError as error:
        raise ValueError(f"{error}{hint}") from None


def check_resumed_config(config: TrainConfig, model_config: ModelConfig | None) -> ModelConfig | None:
    """For train(..., resume=True): ValueError unless the settings that define the model and the data order
    are the saved run's (the CLI merges its flags into the saved ones, so they are); returns the saved
    ModelConfig (None when OUT holds no run config yet)."""
    saved = read_run_config(config.out)
    if saved is None:
        return None
    saved_train, saved_model = saved
    for name in FIXED_ON_RESUME + MODEL_DEFINING:
        if getattr(config, name) != getattr(saved_train, name):
            raise _changed_on_resume(name, getattr(saved_train, name), getattr(config, name), config.out)
    if model_config is not None and model_config != saved_model:
        field = next(f for f in saved_model.to_dict() if getattr(model_config, f) != getattr(saved_model, f))
        raise ValueError(f"model_config: {field} is {getattr(model_config, field)!r}, but the run in {config.out} "
                         f"was started with {getattr(saved_model, field)!r}; a resumed run keeps its model (start a "
                         f"new out instead)")
    return saved_model


def _changed_on_resume(name: str, saved, given, out) -> ValueError:
    flag = "--set" if name == "overrides" else "--" + name.replace("_", "-")
    return ValueError(f"{flag}: the run in {out} was started with {saved!r}, not {given!r}; a resumed run keeps "
                      f"its model and data order (start a new --out instead)")


def merge_for_resume(saved: TrainConfig, explicit: dict) -> TrainConfig:
    """The saved config with the explicitly given settings applied. One that may not change on resume is
    refused by train()'s check_resumed_config, whoever calls it."""
    merged = {**saved.to_dict(), "resume_from": None}
    for name, value in explicit.items():
        merged[name] = {**merged[name], **value} if name == "parallel" else value
    return TrainConfig.from_dict(merged)
