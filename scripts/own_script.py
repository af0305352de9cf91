"""Your own Flax NNX model and training loop on an emulated Trainium2 mesh, through the public API
only (`import rainier_jax as rj`).

    python scripts/own_script.py                       # trn2-mini-8, dp over its 8 ranks
    rainier run scripts/own_script.py --parallel dp=2,fsdp=2,tp=2
    rainier run scripts/own_script.py --processes 2 -- --steps 30

A small next-token model (embedding, one MLP block, a norm, an output head) learns a synthetic
rule: the token after t is (3·t + 1) mod V. Its parameters are annotated with rainier's logical
axis names (`vocab`, `embed`, `mlp`, `norm`), so the layout the mesh is emulated with decides how
they are split; `rj.emulate()` takes the layout from `rainier run`'s flags. The training step is
one jitted function of the model's state (nnx.split / nnx.merge) with an optax AdamW update.
Only process 0 prints.
"""

from __future__ import annotations

import argparse

import rainier_jax as rj

VOCAB, EMBED, MLP = 64, 32, 128


def build_model(rngs):
    import jax
    from flax import nnx

    init = nnx.initializers.normal(0.02)

    class TinyLM(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.embed = nnx.Param(nnx.with_partitioning(init, ("vocab", "embed"))(rngs.params(), (VOCAB, EMBED)))
            self.up = nnx.Linear(EMBED, MLP, rngs=rngs, kernel_init=nnx.with_partitioning(init, ("embed", "mlp")),
                                 bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("mlp",)))
            self.down = nnx.Linear(MLP, EMBED, rngs=rngs, kernel_init=nnx.with_partitioning(init, ("mlp", "embed")),
                                   bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)))
            self.norm = nnx.RMSNorm(EMBED, rngs=rngs,
                                    scale_init=nnx.with_partitioning(nnx.initializers.ones, ("norm",)))
            self.head = nnx.Linear(EMBED, VOCAB, use_bias=False, rngs=rngs,
                                   kernel_init=nnx.with_partitioning(init, ("embed", "vocab")))

        def __call__(self, tokens):
            # A one-hot matmul rather than a gather: the partitioner splits it like any other matmul.
            x = jax.nn.one_hot(tokens, VOCAB) @ self.embed[...]   # [batch, seq, embed]
            x = x + self.down(nnx.gelu(self.up(x)))
            return self.head(self.norm(x))                        # [batch, seq, vocab]

    return TinyLM(rngs)


def batch(rng, size: int, seq: int):
    """Inputs and targets: random tokens and the rule's next token for each."""
    tokens = rng.integers(0, VOCAB, size=(size, seq), dtype="int32")
    return tokens, (3 * tokens + 1) % VOCAB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=16)
    args = parser.parse_args()

    em = rj.emulate()          # before anything else uses JAX: it sets the emulated device count

    import jax
    import numpy as np
    import optax
    from flax import nnx

    say = print if jax.process_index() == 0 else (lambda *a, **k: None)
    say(f"{em}; parameter rules {dict(em.rules)}")
    with em:
        model = build_model(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, optax.adamw(3e-2), wrt=nnx.Param)
        say("embedding table sharded as", model.embed[...].sharding.spec)
        graphdef, state = nnx.split((model, optimizer))

        @jax.jit
        def step(state, tokens, targets):
            model, optimizer = nnx.merge(graphdef, state)

            def loss_fn(model):
                logits = model(tokens)
                return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return nnx.state((model, optimizer)), loss

        rng = np.random.default_rng(0)   # the same batches in every process: each holds them whole
        losses = []
        for t in range(1, args.steps + 1):
            tokens, targets = batch(rng, args.batch, args.seq)
            state, loss = step(state, em.put(tokens, "batch", None), em.put(targets, "batch", None))
            losses.append(float(em.get(loss)))
            if t == 1 or t % 5 == 0 or t == args.steps:
                say(f"step {t:3d}  loss {losses[-1]:.4f}")
    say(f"loss {losses[0]:.4f} → {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
