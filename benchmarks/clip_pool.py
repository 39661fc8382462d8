"""How the Whisper member's attention clip head learns, fast: frozen features held in memory.

The module reads whole 30 s windows of four encoder layers from the feature cache every epoch
(about 50 s an epoch on the 2-core CPU). Here the train and val windows are read once from the same
cache, layer-normalised, averaged over 4 timesteps (what `AttentionClipHead` does first) and
kept in memory as float16, so an epoch of the same head takes seconds and a choice (attention loss,
dropout, learning rate, schedule, epochs) is a minute's run. Every figure is on the val split.

    python benchmarks/clip_pool.py --manifest runs/demo/manifest.csv --cache runs/demo/features \
        --epochs 25 --schedule onecycle --batch 16 [--attention-loss 1] [--dropout 0.3] [--lr 1e-3]

The cache must hold the windows (a `fit` of `configs/whisper_head.yaml` with `feature_cache` set
builds it; `make demo` leaves one in runs/demo/features). The extracted arrays are kept under
`--work` and reused. Prints per epoch: val acc19 (argmax of the 19 classes), emergency/normal
accuracy (summed emergency probability >= 0.5) and AUC of that probability.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from ensemble.core.data import AudioDataModule
from whisper_head.attention import (
    AttentionClipHead,
    attention_target_loss,
    strided_mask,
    strided_mean_layers,
)
from whisper_head.cache import FeatureCache, weights_digest
from whisper_head.losses import event_pick, mask_runs, paste_events
from whisper_head.model import IGNORE, WhisperHeadConfig, WhisperHeadModel

STRIDE = 4  # AttentionClipHead's default: 80 ms steps


def extract(args) -> dict[str, dict[str, np.ndarray]]:
    """Per split: strided features `(N, L, S, D)` float16, valid timesteps, event picks, labels."""
    dm = AudioDataModule(args.manifest, batch_size=1, num_workers=0)
    dm.setup("fit")
    config = WhisperHeadConfig(layer_weights=True, layers=tuple(args.layers))
    model = WhisperHeadModel(config)
    cache = FeatureCache(
        args.cache, weights_digest(model.encoder), model.cached_layers, args.precision
    )
    head_rows = [model.cached_layers.index(i) for i in model.head_layers]
    emergency = torch.zeros(dm.taxonomy.n_classes + 1, dtype=torch.bool)
    emergency[list(dm.taxonomy.emergency_ids)] = True
    out = {}
    for split in ("train", "val"):
        # named by the manifest's bytes and the cache's weights, layers and precision: a changed
        # manifest or encoder never reads arrays extracted for another
        key = hashlib.sha1(Path(args.manifest).read_bytes() + cache.tag.encode()).hexdigest()
        path = Path(args.work) / f"{split}-{key[:12]}.npz"
        if path.is_file():
            out[split] = dict(np.load(path))
            continue
        ds = dm.datasets[split]
        ds.read_audio = False
        x, mask, pick, label = [], [], [], []
        for i in tqdm(range(len(ds)), desc=f"{split} features"):
            item, ref = ds[i], ds.refs[i]
            entry = cache.get(cache.key(ds.clips.path.iloc[ref.clip], ref.start, ds.n_samples))
            if entry is None:
                raise SystemExit(f"{split} window {i} is not in the feature cache {args.cache}")
            states = torch.from_numpy(np.asarray(entry[head_rows])).float()
            states = F.layer_norm(states, states.shape[-1:])[None]  # as the head does first
            x.append(strided_mean_layers(states, STRIDE)[0].half().numpy())
            targets = item["frame_labels"].masked_fill(~item["mask"], IGNORE)
            pick.append(event_pick(targets[None], item["label"][None], emergency)[0].numpy())
            mask.append(item["mask"].numpy())
            label.append(int(item["label"]))
        arrays = {"x": np.stack(x), "mask": np.stack(mask), "pick": np.stack(pick)}
        out[split] = {**arrays, "label": np.array(label)}
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out[split])
    out["emergency"] = {"ids": np.array(sorted(dm.taxonomy.emergency_ids))}
    return out


def paste_from_train(x, m, pick, y, xt, mt, normal_rows, em, share):
    """Each emergency window of the batch, with probability `share`, becomes its event's steps
    written over a random normal train window at a random place: the same label and event, another
    scene. `x (B, L, S, D)`, valid and event steps `(B, S)`; returns new x, m, pick."""
    x, m, pick = x.clone(), m.clone(), pick.clone()
    for i in range(len(y)):
        steps = pick[i].nonzero()[:, 0]
        if int(y[i]) not in em or len(steps) == 0 or torch.rand(()) >= share:
            continue
        a, b = int(steps[0]), int(steps[-1]) + 1
        j = int(normal_rows[torch.randint(len(normal_rows), ()).item()])
        valid = int(mt[j].sum())
        if valid < b - a:
            continue
        t = int(torch.randint(valid - (b - a) + 1, ()))
        event = x[i, :, a:b].clone()
        x[i] = xt[j].float()
        x[i, :, t : t + b - a] = event
        m[i] = mt[j]
        pick[i] = False
        pick[i, t : t + b - a] = True
    return x, m, pick


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--cache", required=True, help="the feature cache folder")
    p.add_argument("--work", default="runs/clip_pool", help="where the extracted arrays are kept")
    p.add_argument("--layers", type=int, nargs="+", default=[3, 4, 5, 6])
    p.add_argument("--precision", default="bf16", help="the cache's precision tag (bf16 | fp32)")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--schedule", choices=["onecycle", "constant"], default="onecycle")
    p.add_argument("--attention-loss", type=float, default=1.0)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema", type=float, default=0.0, help="score an EMA of the weights (decay)")
    p.add_argument(
        "--paste",
        type=float,
        default=0.0,
        help="share of a batch's emergency windows whose event is pasted over another "
        "train window's normal background (a new scene for the same event)",
    )
    p.add_argument(
        "--paste-from",
        choices=["train", "batch"],
        default="train",
        help="backgrounds for --paste: any normal train window, or (as the module's "
        "`clip_event_paste`, `losses.paste_events`) a normal window of the same batch",
    )
    p.add_argument(
        "--time-mask",
        type=float,
        default=0.0,
        help="share of a window's steps masked out in a few runs (never all the event)",
    )
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = extract(args)
    em = data["emergency"]["ids"]
    tr, va = data["train"], data["val"]

    def strided(mask: np.ndarray) -> torch.Tensor:
        return strided_mask(torch.from_numpy(mask), STRIDE)

    xt, mt, pt, yt = (torch.from_numpy(tr["x"]), strided(tr["mask"]), strided(tr["pick"]),
                      torch.from_numpy(tr["label"]))  # fmt: skip
    xv, mv, yv = torch.from_numpy(va["x"]), strided(va["mask"]), va["label"]
    n_layers, d_model = xt.shape[1], xt.shape[-1]
    head = AttentionClipHead(n_layers, d_model, 20, hidden=args.hidden, dropout=args.dropout)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * ((len(xt) + args.batch - 1) // args.batch)
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps)
        if args.schedule == "onecycle"
        else None
    )
    y_em = np.isin(yv, em)
    em_cols = torch.zeros(20, dtype=torch.bool)
    em_cols[torch.from_numpy(em)] = True
    normal_rows = np.flatnonzero(~np.isin(tr["label"], em))
    ema = (
        torch.optim.swa_utils.AveragedModel(
            head, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema)
        )
        if args.ema
        else None
    )
    scored = ema.module if ema is not None else head
    for epoch in range(args.epochs):
        head.train()
        for b in torch.randperm(len(xt)).split(args.batch):
            x, m, pick, y = xt[b].float(), mt[b], pt[b], yt[b]
            if args.paste and args.paste_from == "batch":
                layers = tuple(x.unbind(1))  # (B, S, D) each, strided already
                layers, m, pick = paste_events(layers, m, pick, y, em_cols, args.paste)
                x = torch.stack(layers, 1)
            elif args.paste:
                x, m, pick = paste_from_train(x, m, pick, y, xt, mt, normal_rows, em, args.paste)
            if args.time_mask:  # the module's `clip_time_mask`, in runs of 6 strided steps
                m = mask_runs(m, pick, args.time_mask, 6)
                pick = pick & m
            logits, log_att = head.pool(x, m)  # the features are strided
            loss = F.cross_entropy(logits[:, 1:], y - 1, label_smoothing=args.label_smoothing)
            loss = loss + args.attention_loss * attention_target_loss(log_att, pick, 1)  # strided
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if ema is not None:
                ema.update_parameters(head)
        scored.eval()
        with torch.no_grad():
            probs = torch.cat(
                [
                    scored.pool(xv[i : i + 64].float(), mv[i : i + 64])[0][:, 1:].softmax(-1)
                    for i in range(0, len(xv), 64)
                ]
            ).numpy()
        acc = float((probs.argmax(1) + 1 == yv).mean())
        p_em = probs[:, em - 1].sum(1)
        binary = float(((p_em >= 0.5) == y_em).mean())
        print(f"epoch {epoch}: val acc19 {acc:.3f}  emergency/normal {binary:.3f}  "
              f"AUC {roc_auc_score(y_em, p_em):.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
