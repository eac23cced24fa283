import os, sys, tempfile
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rollout
import numpy as np, torch, jax
from flax import nnx
from memr1_jax.models.loading import load_pretrained
from memr1_jax.sampling import generation
jax.config.update("jax_default_matmul_precision", "highest")
B, P, NEW = 16, 256, 8
DEV = "cuda" if torch.cuda.is_available() else "cpu"
d = tempfile.mkdtemp()
hf = rollout.build_hf_checkpoint(sys.argv[1], "bfloat16", d, DEV, 0)
ids = np.random.default_rng(0).integers(0, hf.config.vocab_size, (B, P))
t = torch.tensor(ids, device=DEV)
with torch.no_grad():
  hb = hf(t).logits[:, -1].float().cpu().numpy()
  hf.float()
  hf_ = hf(t).logits[:, -1].float().cpu().numpy()
  hgen = hf.generate(t, attention_mask=torch.ones_like(t), do_sample=False, max_new_tokens=NEW, pad_token_id=0)[:, P:].cpu().numpy()
del hf; torch.cuda.empty_cache()
prompts = [list(r) for r in ids]
def jl(dtype):
  m, _ = load_pretrained(d, dtype=dtype)
  g, s = nnx.split(m)
  ids_bt, mask = generation.pad_prompts(prompts, B, P, 0)
  _, logits, _ = generation.prefill(g, s, ids_bt, mask, n=1, cache_len=P + NEW)
  gen = generation.generate(m, prompts, key=0, max_new_tokens=NEW).tokens if dtype == "float32" else None
  return np.asarray(logits), gen
jb, _ = jl("bfloat16")
jf, jgen = jl("float32")
def cmp(name, a, b): print(f"{name}: top1 agree {(a.argmax(-1)==b.argmax(-1)).mean():.2f} maxdiff {np.abs(a-b).max():.4f} meandiff {np.abs(a-b).mean():.5f}", flush=True)
s = np.sort(hf_, -1)
print(f"logit std {hf_.std():.3f}, median top1-top2 gap {np.median(s[:, -1] - s[:, -2]):.4f}")
cmp("hf_bf16 vs hf_f32", hb, hf_); cmp("jax_bf16 vs hf_f32", jb, hf_); cmp("jax_f32 vs hf_f32", jf, hf_); cmp("jax_bf16 vs hf_bf16", jb, hb)
print("greedy f32 tokens equal HF:", (jgen == hgen).mean(), "rows fully equal:", (jgen == hgen).all(1).mean())
