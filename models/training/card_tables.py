"""Tables every exam's model card shows: the shortcut audits, and an ensemble's members."""

from __future__ import annotations

from models.bundle import AuditCheck, EnsembleMember


def fmt(value: float | None, spec: str = ".4f") -> str:
    """A card's number; "-" where there is none (None or NaN: an AUC of a group with one class)."""
    return "-" if value is None or value != value else format(value, spec)


def audit_table(checks: list[AuditCheck], positive: str, negative: str, probability: str) -> str:
    """The audits as a card's table: each check's flip rate, per side of the urgent group; the audit
    group's rows name the group and its size."""
    rows = [f"| check | what changes | flip rate | {positive} flipped | {negative} flipped | mean change of {probability} |",
            "|---|---|---|---|---|---|"]
    for c in checks:
        name = c.name if c.group is None else f"{c.name}, {c.group} only (n={c.n})"
        rows.append(f"| {name} | {c.description} | {c.flip_rate:.2%} | {fmt(c.flip_rate_positive, '.2%')} | "
                    f"{fmt(c.flip_rate_negative, '.2%')} | {c.mean_delta:+.4f} |")
    return "\n".join(rows)


def audit_group_note(checks: list[AuditCheck]) -> str:
    """A sentence on the audit group's rates, for the card (empty without a group)."""
    grouped = [c for c in checks if c.group is not None]
    if not grouped:
        return ""
    worst = max(grouped, key=lambda c: c.flip_rate)
    return (f"\n\nThe rows marked {worst.group} score the geometry checks on that acquisition group alone "
            f"(n={worst.n}), the one a new site's films resemble most; the limit holds there too (worst: "
            f"{worst.name} {worst.flip_rate:.2%}).")


# Options that say where a run read and wrote, not how the model was made: left out when members
# are compared (a member of a --hold-out run is the twin of the member trained without it).
RUN_OPTIONS = ("hold_out", "runs_dir", "out", "data", "id", "version", "no_progress", "command", "exam")
# Shown for every member; any other option that differs between the members is shown too.
SHOWN = ("size", "widths", "blocks", "seed", "epochs", "tta")


def member_recipe(member: dict) -> dict[str, str]:
    """How a member was made: its trainer's options, less where it read and wrote."""
    return {k: v for k, v in member.get("train_config", {}).items() if k not in RUN_OPTIONS}


def member_configs(members: list[dict]) -> list[str]:
    """Each member's recipe in words: input side, widths, blocks, seed, epochs (dihedral copies),
    then every other option in which the members differ."""
    recipes = [member_recipe(m) for m in members]
    differing = sorted(k for k in set().union(*recipes) if k not in SHOWN and len({r.get(k) for r in recipes}) > 1)
    out = []
    for m, r in zip(members, recipes):
        text = (f"{m['size']} px, widths {'-'.join(str(w) for w in m['widths'])}, {m['blocks']} "
                f"block{'s' if int(m['blocks']) > 1 else ''}/stage, seed {m['seed']}")
        if "epochs" in r:
            text += f", {r['epochs']} epoch{'' if str(r['epochs']) == '1' else 's'}"
        if int(m.get("tta", 1)) > 1:
            text += f", {m['tta']} dihedral copies"
        out.append(text + "".join(f", --{k.replace('_', '-')} {r.get(k, '-')}" for k in differing))
    return out


def ensemble_members(checkpoint: dict, folds: list[dict]) -> list[EnsembleMember]:
    """Each member of an ensemble checkpoint with its figures in the ensemble's graph, and its
    held-out figures in the fold ensembles of the same recipe (`folds`, see group_shift_folds):
    a fold member is a member's twin when it was made the same way, held-out groups aside."""
    members = []
    for m, config in zip(checkpoint["members"], member_configs(checkpoint["members"])):
        scores = dict(m["scores"])
        for fold in folds:
            twin = next((f for f in fold["members"] if member_recipe(f) == member_recipe(m)), None)
            if twin is not None:
                scores.update({f"{k} ({fold['name']})": v for k, v in twin["scores"].items() if k not in m["scores"]})
        members.append(EnsembleMember(config=config, input_side=int(m["size"]),
                                      training_command=m["training_command"], scores=scores))
    return members


def members_table(checkpoint: dict, folds: list[dict]) -> str:
    """The members and the ensemble side by side: config, then each figure (held-out ones from the
    fold ensembles, where given)."""
    members = ensemble_members(checkpoint, folds)
    whole = dict(checkpoint["scores"])
    for fold in folds:
        whole.update({f"{k} ({fold['name']})": v for k, v in fold.get("scores", {}).items() if k not in whole})
    columns = list(dict.fromkeys([*whole, *(k for m in members for k in m.scores)]))
    rows = ["| member | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    rows += [f"| {m.config} | " + " | ".join(fmt(m.scores.get(c)) for c in columns) + " |" for m in members]
    rows.append("| **ensemble (averaged in the graph)** | " + " | ".join(fmt(whole.get(c)) for c in columns) + " |")
    return "\n".join(rows)


def common_grid(checkpoint: dict) -> int:
    """The side of the grid an ensemble's CAM output takes (models.training.ensemble_graph)."""
    from models.training.export import ensemble_model  # torch: only an export writes a card

    return ensemble_model(checkpoint).cam_side
