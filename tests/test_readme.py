"""The README's Python examples run as written."""

import re

from conftest import REPO


def test_readme_python_examples_run(sample_root, tmp_path, monkeypatch):
    from mosaicbert.export import export_model
    from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM

    # The export example loads `exported/my-bert`: a small export, in a scratch working directory.
    MosaicBertForMaskedLM(MosaicBertConfig(vocab_size=2048, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=64)).save_pretrained(tmp_path / "model")
    export_model(str(tmp_path / "model"), str(tmp_path / "exported" / "my-bert"), str(sample_root / "tokenizer"),
                 check=False, progress=lambda message: None)
    monkeypatch.chdir(tmp_path)
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
