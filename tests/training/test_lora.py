"""LoRA via peft: adapters train, the reference is the adapter-free model, export merges."""

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.config import LoraSettings, TrainingConfig
from turnrl.training.lora import AdapterDisabledReference, add_lora, is_peft_model, load_adapter
from turnrl.training.trainer import Trainer


def config(tmp_path, **algorithm):
    return TrainingConfig.from_profile(
        "balanced",
        model={"lora": {"r": 4, "alpha": 8}},
        algorithm={"beta": 0.1, **algorithm},
        optim={"lr": 1e-2, "warmup_steps": 0},
        generation={"max_new_tokens": 4},
        rollout={"scenarios_per_step": 2, "num_generations": 4},
        run={"output_dir": str(tmp_path / "run"), "max_steps": 2},
    )


@pytest.mark.anyio
async def test_lora_trains_adapters_against_the_adapter_free_reference(tiny_agent, tmp_path):
    base = {n: p.detach().clone() for n, p in tiny_agent.model.named_parameters()}
    trainer = Trainer(
        tiny_agent, ArithmeticEnvironment(make_scenarios(n=4)), None, config(tmp_path)
    )
    assert is_peft_model(trainer.policy) and tiny_agent.engine.model is trainer.policy
    assert isinstance(trainer.ref_model, AdapterDisabledReference)
    trainable = [n for n, p in trainer.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    first = await trainer.step()
    assert first["train/kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start at zero
    second = await trainer.step()
    assert second["train/kl"] > 0  # the adapters moved away from the base model
    # The base weights did not change: only the adapters trained.
    for name, p in trainer.policy.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name.replace(".base_layer", "")]), name


@pytest.mark.anyio
async def test_save_stores_the_adapter_and_export_merges_it(tiny_agent, tmp_path):
    trainer = Trainer(
        tiny_agent, ArithmeticEnvironment(make_scenarios(n=4)), None, config(tmp_path)
    )
    await trainer.step()
    trainer.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    trainer.save(tmp_path / "merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = trainer.policy(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_wrapping_and_loading_an_adapter_print_no_deprecation_warning(tiny_agent, tmp_path):
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = add_lora(tiny_agent.model, LoraSettings(r=4))
        model.save_pretrained(tmp_path / "adapter")
        loaded = load_adapter(model.get_base_model(), tmp_path / "adapter")
        warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
    assert is_peft_model(loaded)
    shown = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert shown == ["`is_gradient_checkpointing` is deprecated"]  # only the one outside
    assert warnings.filters == filters


@pytest.mark.anyio
async def test_a_saved_adapter_names_its_base_by_absolute_path(tiny_path, tmp_path, monkeypatch):
    import json
    import shutil

    from transformers import AutoTokenizer

    from turnrl.agents.transformers import TransformersAgent
    from turnrl.training.export import load_policy

    shutil.copytree(tiny_path, tmp_path / "base")
    monkeypatch.chdir(tmp_path)  # the base model is named relative to here: "base"
    env = ArithmeticEnvironment(make_scenarios(n=4))
    agents = {
        "trainer": TransformersAgent.from_pretrained("base"),
        "script": TransformersAgent(  # a model the script loaded itself, by a relative path
            AutoModelForCausalLM.from_pretrained("base"), AutoTokenizer.from_pretrained("base")
        ),
    }
    trainer = Trainer(agents["trainer"], env, None, config(tmp_path))
    trainer.save(tmp_path / "trainer")
    trainer.close()
    Trainer(agents["script"], env, None, config(tmp_path / "other")).close()  # adds the adapters
    agents["script"].save_pretrained(tmp_path / "script")
    monkeypatch.chdir(tmp_path / "other")  # anywhere else
    for name in agents:
        adapter = json.loads((tmp_path / name / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str((tmp_path / "base").resolve())
        assert is_peft_model(load_policy(tmp_path / name).model)
    with pytest.raises(FileNotFoundError, match="holds a LoRA adapter, not a whole model"):
        TransformersAgent.from_pretrained(tmp_path / "script")
    agents["script"].save_pretrained(tmp_path / "merged", merge=True)
    assert not is_peft_model(TransformersAgent.from_pretrained(tmp_path / "merged").model)
