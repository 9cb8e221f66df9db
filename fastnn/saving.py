"""Saving and loading whole models (.keras zip, legacy .h5) and weights (.weights.h5), as
Keras's keras.saving: the public names, gathered from where they live. The files themselves are
fastnn.model_files (their layouts and guarantees: atomic writes, bounded reads, docs/
reliability.md "Files"); the checks of a model's config are fastnn.model_config; building a
model from its config is fastnn.models; the custom classes a file may name are fastnn.registry.
This module imports those and nothing imports it, so that none of them imports another back.
Its constants are copies: the code reads them where they live (fastnn.model_files,
fastnn.model_config)."""
from .model_config import MAX_NESTING, check_functional_config, check_sequential_config  # noqa: F401,E501
from .model_files import (  # noqa: F401
    KERAS_VERSION,
    MAX_JSON_BYTES,
    STALE_TEMP_AGE_S,
    _optimizer_variables,
    load_weights,
    save_model,
    save_weights,
)
from .models import load_model, model_entry, model_from_config_entry  # noqa: F401
from .registry import custom_object_scope, get_custom_objects, register_keras_serializable  # noqa: F401,E501
