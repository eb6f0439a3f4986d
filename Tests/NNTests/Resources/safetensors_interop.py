"""The Python side of the safetensors interop tests (run by Tests/NNTests/SafeTensorsInteropTests.swift).

    python3 safetensors_interop.py read FILE EXPECTED.json   # check a Cohort checkpoint
    python3 safetensors_interop.py write FILE KEYS.json      # write a state dict as PyTorch users would

Needs `pip install safetensors numpy` (not torch). Exits non-zero with a message on any mismatch.
"""
import json, sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

def read(path, expected_path):
    expected = json.load(open(expected_path))
    tensors = load_file(path)
    names = expected["names"]
    if sorted(tensors) != sorted(names):
        sys.exit(f"names differ: extra {sorted(set(tensors) - set(names))}, missing {sorted(set(names) - set(tensors))}")
    with safe_open(path, framework="np") as f:
        if list(f.keys()) != sorted(names) and sorted(f.keys()) != sorted(names):
            sys.exit("safe_open lists different names")
        metadata = f.metadata() or {}
    for key, value in expected["metadata"].items():
        if metadata.get(key) != value:
            sys.exit(f"metadata {key}: {metadata.get(key)!r} != {value!r}")
    for name in names:
        t = tensors[name]
        e = expected["tensors"][name]
        if list(t.shape) != e["shape"]:
            sys.exit(f"{name}: shape {list(t.shape)} != {e['shape']}")
        if str(t.dtype) != e["dtype"]:
            sys.exit(f"{name}: dtype {t.dtype} != {e['dtype']}")
        if not np.array_equal(t.reshape(-1), np.array(e["values"], dtype=t.dtype)):
            sys.exit(f"{name}: values differ")
    print(f"ok: {len(names)} tensors")

def write(path, keys_path):
    entries = json.load(open(keys_path))
    state = {}
    for i, (name, shape) in enumerate(entries):
        if name.endswith("num_batches_tracked"):
            state[name] = np.array(7 + i, dtype=np.int64)
        else:
            n = int(np.prod(shape)) if shape else 1
            state[name] = ((np.arange(n, dtype=np.float32) * 0.001) + i).reshape(shape)
    save_file(state, path, metadata={"written_by": "python safetensors"})
    print(f"ok: wrote {len(state)} tensors")

if __name__ == "__main__":
    {"read": read, "write": write}[sys.argv[1]](*sys.argv[2:])
