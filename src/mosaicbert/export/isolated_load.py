"""Load an exported folder the way a user of the hub would: plain transformers, `trust_remote_code=True`, in
a Python process where this package cannot be imported. Run as a script by `parity.py`, never imported:

    python -I isolated_load.py FOLDER AUTO_CLASS INPUTS.safetensors OUTPUTS.safetensors [FILL_MASK_TEXT]

Writes the folder's logits for the inputs to OUTPUTS and prints one JSON line: the class and module that
transformers loaded, the fill-mask pipeline's top prediction, and whether anything imported `mosaicbert`.
"""

import importlib.abc
import json
import os
import sys


class RefusePackage(importlib.abc.MetaPathFinder):
    """The package may be installed (editable) in this environment: make sure nothing here uses it."""

    def find_spec(self, name, path=None, target=None):
        if name == "mosaicbert" or name.startswith("mosaicbert."):
            raise ModuleNotFoundError(f"{name} is refused in the isolated check", name=name)
        return None


def main(folder: str, auto_class: str, inputs_file: str, outputs_file: str, fill_mask_text: str | None = None) -> None:
    # An editable install puts the package's source folder on the path: take it off. (A regular install puts it
    # in site-packages beside torch and transformers, which must stay; the import hook below covers that case.)
    sys.path[:] = [entry for entry in sys.path if not (os.path.isdir(os.path.join(entry or ".", "mosaicbert"))
                                                       and not os.path.isdir(os.path.join(entry or ".", "transformers")))]
    sys.meta_path.insert(0, RefusePackage())
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True).eval()
    inputs = load_file(inputs_file)
    with torch.no_grad():
        logits = model(**inputs).logits
    save_file({"logits": logits.float().contiguous()}, outputs_file)
    report = {"class": type(model).__name__, "module": type(model).__module__}
    if fill_mask_text is not None:
        fill_mask = transformers.pipeline("fill-mask", model=folder, trust_remote_code=True, device="cpu")
        report["fill_mask_top"] = fill_mask(fill_mask_text, top_k=1)[0]["token"]
    report["mosaicbert_imported"] = any(name.split(".")[0] == "mosaicbert" for name in sys.modules)
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
