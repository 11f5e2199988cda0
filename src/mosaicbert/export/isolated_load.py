"""Load an exported folder the way a user of the hub would: plain transformers, `trust_remote_code=True`, in
a Python process where this package cannot be imported. Run as a script by `parity.py`, never imported:

    python -I isolated_load.py FOLDER AUTO_CLASS INPUTS.safetensors OUTPUTS.safetensors [TASK TEXTS_JSON]

Writes the folder's logits for the inputs to OUTPUTS and prints one JSON line: the class and module that
transformers loaded, the answers of the TASK pipeline for each text (what they hold: parity.py's docstring),
and whether anything imported `mosaicbert`.
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


def pipeline_answers(folder: str, task: str, texts: list) -> list:
    import transformers  # already imported by main(), after the package was taken off the path

    pipe = transformers.pipeline(task, model=folder, trust_remote_code=True, device="cpu")
    if task == "fill-mask":
        return [pipe(text, top_k=1)[0]["token"] for text in texts]
    if task == "text-classification":
        texts = [text if isinstance(text, str) else {"text": text[0], "text_pair": text[1]} for text in texts]
        if pipe.model.config.problem_type == "multi_label_classification":
            return [sorted(row["label"] for row in pipe(text, top_k=None) if row["score"] > 0.5) for text in texts]
        return [pipe(text, top_k=1)[0]["label"] for text in texts]
    return [{"tokens": [[row["index"], row["word"], row["entity"]]
                        for row in pipe(text, aggregation_strategy="none", ignore_labels=[])],  # "O" tokens too
             "groups": [[row["entity_group"], row["start"], row["end"]]
                        for row in pipe(text, aggregation_strategy="simple")]} for text in texts]


def main(folder: str, auto_class: str, inputs_file: str, outputs_file: str, task: str | None = None,
         texts_json: str = "[]") -> None:
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
    if task is not None:
        report["pipeline"] = pipeline_answers(folder, task, json.loads(texts_json))
    report["mosaicbert_imported"] = any(name.split(".")[0] == "mosaicbert" for name in sys.modules)
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
