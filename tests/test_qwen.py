"""Model parity with transformers' Qwen2, HF import/export, cache and dtype policy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from r3jax.models import hf, qwen
from helpers import left_padded_batch, make_hf_qwen


def torch_logits(model, ids, mask):
  with torch.no_grad():
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.float().numpy()


def ours_logits(cfg, params, ids, mask):
  logits, _, _ = qwen.Qwen(cfg).apply({"params": params}, jnp.asarray(ids),
                                      kv_mask_BS=jnp.asarray(mask))
  return np.asarray(logits)


def masked_maxdiff(a, b, mask):
  return float((np.abs(a - b) * mask[..., None]).max())


@pytest.mark.parametrize("tie,kv_heads", [(False, 2), (True, 2), (False, 4)],
                         ids=["gqa-untied", "gqa-tied", "mha-untied"])
def test_hf_parity_and_export_roundtrip(tmp_path, tie, kv_heads):
  ref = make_hf_qwen(tmp_path / "hf", tie=tie, kv_heads=kv_heads)
  cfg, params = hf.load(str(tmp_path / "hf"))
  assert cfg.tie_embeddings == tie and cfg.num_kv_heads == kv_heads
  assert ("lm_head" in params) == (not tie)
  ids, mask = left_padded_batch()
  want = torch_logits(ref, ids, mask)
  got = ours_logits(cfg, params, ids, mask)
  assert masked_maxdiff(got, want, mask) <= 1e-4

  # Export and reload with transformers itself.
  from transformers import AutoModelForCausalLM
  hf.export(params, cfg, str(tmp_path / "out"))
  back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  assert masked_maxdiff(torch_logits(back, ids, mask), want, mask) <= 1e-5


def test_sharded_and_bf16_load(tmp_path):
  ref = make_hf_qwen(tmp_path / "hf")
  cfg, params = hf.load(str(tmp_path / "hf"))
  hf.export(params, cfg, str(tmp_path / "sharded"), max_shard_bytes=20_000)
  assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
  cfg2, params2 = hf.load(str(tmp_path / "sharded"))
  chex.assert_trees_all_equal(params, params2)

  cfg16, params16 = hf.load(str(tmp_path / "hf"), param_dtype="bfloat16", dtype="bfloat16")
  chex.assert_trees_all_equal_dtypes(params16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
  ids, mask = left_padded_batch()
  got = ours_logits(cfg16, params16, ids, mask)
  assert got.dtype == np.float32  # logits_fp32 default.
  # bf16 weights and activations: close to fp32, not equal.
  assert masked_maxdiff(got, torch_logits(ref, ids, mask), mask) < 0.1


def test_missing_checkpoint_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    hf.load(str(tmp_path))


class CacheTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_incremental_decoding_matches_full_pass(self):
    cfg = qwen.preset("tiny", vocab_size=97)
    params = qwen.init_params(cfg, jax.random.key(1))
    ids, mask = left_padded_batch(vocab=97)
    full = ours_logits(cfg, params, ids, mask)
    model = qwen.Qwen(cfg)
    b, t = ids.shape
    split = 7  # Prefill 7 tokens, then feed the rest one at a time.
    cache = qwen.init_cache(cfg, b, t)
    pos = qwen.positions_from_mask(jnp.asarray(mask))
    fwd = self.variant(lambda p, x, ps, m, c, i: model.apply({"params": p}, x, ps, m, c, i))
    logits, _, cache = fwd(params, jnp.asarray(ids[:, :split]), pos[:, :split], jnp.asarray(mask),
                           cache, 0)
    steps = [np.asarray(logits)]
    for i in range(split, t):
      logits, _, cache = fwd(params, jnp.asarray(ids[:, i:i + 1]), pos[:, i:i + 1],
                             jnp.asarray(mask), cache, jnp.int32(i))
      steps.append(np.asarray(logits))
    inc = np.concatenate(steps, axis=1)
    chex.assert_shape(inc, (b, t, 97))
    assert masked_maxdiff(inc, full, mask) <= 1e-5


def test_dtype_policy_and_rope_in_fp32():
  cfg = qwen.preset("tiny", param_dtype="float32", dtype="bfloat16", logits_fp32=False)
  params = qwen.init_params(cfg, jax.random.key(0))
  ids = jnp.ones((2, 5), jnp.int32)
  logits, hidden, _ = qwen.Qwen(cfg).apply({"params": params}, ids)
  chex.assert_type([logits, hidden], jnp.bfloat16)
  logits32, _, _ = qwen.Qwen(cfg.replace(logits_fp32=True)).apply({"params": params}, ids)
  chex.assert_type(logits32, jnp.float32)
  # bf16 has an 8-bit mantissa: a bf16 angle at position 1000 would be off by several
  # radians. Rotating a bf16 input must agree with the fp32 rotation to bf16 precision.
  x = jax.random.normal(jax.random.key(0), (1, 1, 1, 64))
  pos = jnp.array([[1000]])
  got = qwen.rope(x.astype(jnp.bfloat16), pos, 1e6).astype(jnp.float32)
  want = qwen.rope(x, pos, 1e6)
  assert float(jnp.abs(got - want).max()) < 0.05


@pytest.mark.slow
def test_remat_and_dropout():
  cfg = qwen.preset("tiny", dropout_rate=0.1)
  params = qwen.init_params(cfg, jax.random.key(0))
  ids = jax.random.randint(jax.random.key(1), (2, 6), 0, cfg.vocab_size)

  def loss(p, c, rng):
    logits, _, _ = qwen.Qwen(c).apply({"params": p}, ids, deterministic=False,
                                      rngs={"dropout": rng})
    return jnp.mean(logits ** 2)

  g1 = jax.grad(loss)(params, cfg, jax.random.key(2))
  g2 = jax.grad(loss)(params, cfg.replace(remat=True), jax.random.key(2))
  chex.assert_trees_all_close(g1, g2, atol=1e-6)
  assert float(loss(params, cfg, jax.random.key(2))) != float(loss(params, cfg, jax.random.key(3)))


def test_every_param_has_logical_axes():
  cfg = qwen.preset("tiny")
  axes = qwen.logical_axes(cfg)
  params = qwen.init_params(cfg, jax.random.key(0))
  names = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm"}
  for (path, spec), p in zip(jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                             jax.tree.leaves(params)):
    assert len(spec) == p.ndim and set(spec) <= names, (path, spec)


def test_presets_and_hf_config():
  assert qwen.preset("qwen-7b").hidden_size == 4096
  assert qwen.preset("qwen-14b").num_layers == 40
  cfg = qwen.config_from_hf({"vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24,
                             "num_attention_heads": 14, "num_key_value_heads": 2,
                             "intermediate_size": 4864, "rope_theta": 1000000.0,
                             "tie_word_embeddings": True})
  assert cfg.head_size == 64 and cfg.tie_embeddings and cfg.rope_theta == 1e6
  with pytest.raises(ValueError, match="unknown model preset"):
    qwen.preset("nope")


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_qwen3_parity_and_export_roundtrip(tmp_path, tie):
  """Qwen3: q/k RMSNorm per head, no q/k/v bias, head_dim (24) not hidden / heads (16)."""
  from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM
  torch.manual_seed(0)
  ref = Qwen3ForCausalLM(Qwen3Config(
      vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, head_dim=24, max_position_embeddings=256, tie_word_embeddings=tie,
      rms_norm_eps=1e-6, rope_theta=10000.0)).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if "norm" in name:
        p.add_(torch.randn_like(p) * 0.1)
  ref.save_pretrained(str(tmp_path / "hf"))
  cfg, params = hf.load(str(tmp_path / "hf"))
  assert (cfg.qk_norm, cfg.qkv_bias, cfg.head_size, cfg.tie_embeddings) == (True, False, 24, tie)
  assert "q_bias" not in params["layers_0"]["attn"] and "q_norm" in params["layers_0"]["attn"]
  ids, mask = left_padded_batch()
  want = torch_logits(ref, ids, mask)
  assert masked_maxdiff(ours_logits(cfg, params, ids, mask), want, mask) <= 1e-4
  hf.export(params, cfg, str(tmp_path / "out"))
  back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  assert type(back).__name__ == "Qwen3ForCausalLM"
  assert masked_maxdiff(torch_logits(back, ids, mask), want, mask) <= 1e-5


def test_qwen1_checkpoint_imports_as_the_equivalent_qwen2(tmp_path):
  """A Qwen (v1) layout (fused c_attn, w1/w2/c_proj MLP, ln_1/ln_2, intermediate_size = 2 x
  the FFN width, rotary_emb_base) made from a random Qwen2 model: importing it gives that
  model's logits."""
  import json
  from safetensors.numpy import save_file
  ref = make_hf_qwen(tmp_path / "qwen2", kv_heads=4, heads=4)  # v1 has no GQA.
  sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  v1 = {"transformer.wte.weight": sd["model.embed_tokens.weight"],
        "transformer.ln_f.weight": sd["model.norm.weight"], "lm_head.weight": sd["lm_head.weight"]}
  for i in range(2):
    a, b = f"model.layers.{i}.", f"transformer.h.{i}."
    qkv = lambda kind: np.concatenate([sd[a + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
    v1.update({b + "ln_1.weight": sd[a + "input_layernorm.weight"],
               b + "ln_2.weight": sd[a + "post_attention_layernorm.weight"],
               b + "attn.c_attn.weight": qkv("weight"), b + "attn.c_attn.bias": qkv("bias"),
               b + "attn.c_proj.weight": sd[a + "self_attn.o_proj.weight"],
               b + "mlp.w1.weight": sd[a + "mlp.up_proj.weight"], b + "mlp.w2.weight": sd[a + "mlp.gate_proj.weight"],
               b + "mlp.c_proj.weight": sd[a + "mlp.down_proj.weight"]})
  (tmp_path / "v1").mkdir()
  save_file(v1, str(tmp_path / "v1" / "model.safetensors"))
  json.dump({"architectures": ["QWenLMHeadModel"], "model_type": "qwen", "vocab_size": 128,
             "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "kv_channels": 16,
             "intermediate_size": 192, "rotary_emb_base": 10000, "layer_norm_epsilon": 1e-6,
             "seq_length": 256, "tie_word_embeddings": False, "no_bias": True},
            open(tmp_path / "v1" / "config.json", "w"))
  cfg, params = hf.load(str(tmp_path / "v1"))
  assert (cfg.intermediate_size, cfg.num_kv_heads, cfg.qkv_bias) == (96, 4, True)
  ids, mask = left_padded_batch()
  got = ours_logits(cfg, params, ids, mask)
  assert masked_maxdiff(got, torch_logits(ref, ids, mask), mask) <= 1e-4
