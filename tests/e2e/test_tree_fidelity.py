"""The plugin's tree drafts compute ViSpec's draft: at every expanded node of every
EAGLE-2 tree, the draft's log-probabilities equal the pure-PyTorch reference's for that
node's path, and the tree's candidates are the ones TreeGrowth's rule picks from them.

The reference is fed what the chain fidelity test feeds it (the target features vLLM
computed, the true tokens, whole images) for the context, then the node's path: the
tokens along it, each with the reference's own output at its parent as feature (EAGLE's
rule), at positions one past the other. It knows nothing of tree rows or ancestor masks.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from prompts import conversations
from test_draft_fidelity import DraftRecorder, checkable_proposals, draft_weights
from vllm_runs import greedy_params, offline_llm, vispec_config

from vllm_vispec.proposer import VispecProposer
from vllm_vispec.reference import ReferenceDraft
from vllm_vispec.tiny import tiny_draft
from vllm_vispec.tree.dynamic_tree import TreeGrowth
from vllm_vispec.tree.options import TreeOptions

LOGIT_TOL = 1e-4  # fp32; same inputs, different summation order
WHOLE_BATCH = {"chain_above_batch": 64, "off_above_batch": 64}  # trees at every step
TREES = {
    "small": {"depth": 2, "top_k": 4, "total_tokens": 11, **WHOLE_BATCH},
    # The paper's: 4 levels (the root's top 8, then 3 expansions), 29 nodes + the root.
    "paper": {"depth": 3, "top_k": 8, "total_tokens": 30, **WHOLE_BATCH},
}


class TreeRecorder(DraftRecorder):
    """DraftRecorder (context features, each step's request and position) plus, for every
    tree step, the root's log-probabilities, each level's frontier and the log-probabilities
    after each frontier node, the final candidates and the tree each request was given."""

    def __init__(self, monkeypatch):
        super().__init__(monkeypatch)
        self._growth: dict | None = None
        propose = VispecProposer.propose  # DraftRecorder's
        start, extend = TreeGrowth.start.__func__, TreeGrowth.extend
        rec = self

        def recording_propose(proposer, **kw):
            rec._growth = None
            first = len(rec.proposals)
            tokens = propose(proposer, **kw)
            if rec._growth is not None:
                growth = rec._growth["growth"]
                for b, prop in enumerate(rec.proposals[first:]):
                    prop["tree"] = dict(
                        root=rec._growth["root"][b],
                        levels=[(f[b], lp[b]) for f, lp in rec._growth["levels"]],
                        tokens=growth.tokens[b].tolist(), parents=growth.parents[b].tolist(),
                        scores=growth.scores[b].clone(),
                        kept=proposer.trees[prop["req_id"]])
            return tokens

        def recording_start(cls, logprobs, top_k):
            growth = start(cls, logprobs, top_k)
            rec._growth = dict(growth=growth, root=logprobs.float().clone(), levels=[])
            return growth

        def recording_extend(growth, logprobs):
            rec._growth["levels"].append((growth.frontier.clone(), logprobs.float().clone()))
            return extend(growth, logprobs)

        monkeypatch.setattr(VispecProposer, "propose", recording_propose)
        monkeypatch.setattr(TreeGrowth, "start", classmethod(recording_start))
        monkeypatch.setattr(TreeGrowth, "extend", recording_extend)


def fork(ref: ReferenceDraft) -> ReferenceDraft:
    """A copy whose steps do not reach the original's KV cache (a sibling path)."""
    return dataclasses.replace(ref, keys=list(ref.keys), values=list(ref.values))


def assert_best(chosen: list[int], values: torch.Tensor, k: int, tol: float, what) -> None:
    """``chosen`` are ``k`` distinct indices of the ``k`` largest ``values`` (near ties
    within ``tol`` either way)."""
    assert len(set(chosen)) == len(chosen) == k, what
    rest = torch.ones_like(values, dtype=torch.bool)
    rest[chosen] = False
    if rest.any():
        assert values[chosen].min() >= values[rest].max() - tol, what


class PathOracle:
    """The reference draft after the context, then along any tree path (cached by path)."""

    def __init__(self, ref: ReferenceDraft, context_out: torch.Tensor):
        self.states = {(): (ref, context_out)}

    def logprobs(self, path: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities, logits) after the path's last token."""
        ref, out = self.state(path)
        logits = ref.logits(out)
        return logits.log_softmax(-1), logits

    def state(self, path):
        if path not in self.states:
            parent, out = self.state(path[:-1])
            child = fork(parent)
            self.states[path] = (child, child.step(path[-1], out))
        return self.states[path]


def path_of(candidate: int, tokens: list[int], parents: list[int]) -> tuple[int, ...]:
    path = []
    while candidate >= 0:
        path.append(tokens[candidate])
        candidate = parents[candidate]
    return tuple(reversed(path))


def check_tree(tree: dict, oracle: PathOracle, k: int, num_nodes: int, what) -> tuple:
    """Checks one request's tree step; returns (nodes checked, worst log-prob diff)."""
    tokens, parents, scores = tree["tokens"], tree["parents"], tree["scores"]
    worst, nodes = 0.0, 0

    def check_node(node: int, draft_lp: torch.Tensor, children: range, where) -> None:
        """``node``: the candidate expanded (-1: the root); ``children``: its candidates."""
        nonlocal worst, nodes
        path = path_of(node, tokens, parents)
        ref_lp, ref_logits = oracle.logprobs(path)
        scale = max(1.0, ref_logits.abs().max().item())
        diff = (draft_lp - ref_lp).abs().max().item()
        worst = max(worst, diff)
        assert diff <= LOGIT_TOL * scale, (*what, where, path, diff)
        # Its children are the top_k of its log-probabilities, each scored with its
        # path's cumulative log-probability.
        assert all(parents[c] == node for c in children), (*what, where, path)
        child_tokens = [tokens[c] for c in children]
        assert_best(child_tokens, ref_lp, k, 10 * LOGIT_TOL * scale, (*what, where, path))
        parent_score = float(scores[node]) if node >= 0 else 0.0
        torch.testing.assert_close(scores[children.start:children.stop],
                                   parent_score + ref_lp[child_tokens],
                                   rtol=0, atol=2 * LOGIT_TOL * scale,
                                   msg=lambda m: f"{what} {where} {path}: {m}")
        nodes += 1

    check_node(-1, tree["root"], range(0, k), "root")
    level_start, level_size = 0, k
    for level, (frontier, draft_lps) in enumerate(tree["levels"], start=1):
        frontier = frontier.tolist()
        # The frontier: the top_k best-scored candidates of the last level.
        assert_best([f - level_start for f in frontier],
                    scores[level_start:level_start + level_size], k, 0.0,
                    (*what, "frontier", level))
        children_start = level_start + level_size
        for j, f in enumerate(frontier):
            first_child = children_start + j * k
            check_node(f, draft_lps[j], range(first_child, first_child + k), f"level {level}")
        level_start, level_size = children_start, k * len(frontier)
    assert level_start + level_size == len(tokens), what
    # The tree given to the target: the num_nodes best-scored candidates.
    kept = tree["kept"]
    assert len(kept) == num_nodes, what
    by_path = {path_of(c, tokens, parents): c for c in range(len(tokens))}
    node_paths: list[tuple[int, ...]] = []
    for token, parent in zip(kept.tokens, kept.parents):
        node_paths.append((node_paths[parent] if parent >= 0 else ()) + (token,))
    assert all(p in by_path for p in node_paths), (*what, "a node that is no candidate")
    chosen = [by_path[p] for p in node_paths]
    assert_best(chosen, scores, num_nodes, 0.0, (*what, "kept"))
    return nodes, worst


@pytest.mark.parametrize("kind,tree_name", [("llava", "small"), ("qwen2_5_vl", "small"),
                                            ("llava", "paper")])
def test_tree_node_logits_match_the_reference(kind, tree_name, monkeypatch):
    tree_config = TREES[tree_name]
    rec = TreeRecorder(monkeypatch)
    convs = conversations()
    with offline_llm(kind, vispec_config(kind, 2, tree=tree_config)) as llm:
        outputs = llm.chat(list(convs.values()), greedy_params(), use_tqdm=False)
        runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
        modes = dict(runner.drafter.mode_counts)
        target = runner.model
        lm_head = target.get_language_model().lm_head.weight.float()
        embed = target.get_language_model().model.embed_tokens.weight.float()
    assert modes["tree"] > 0 and modes["chain"] == modes["off"] == 0, modes
    dims, weights = draft_weights(tiny_draft(kind))
    names = list(convs)
    options = TreeOptions.parse(tree_config)
    k = options.top_k

    steps = {name: 0 for name in names}
    nodes, worst = 0, 0.0
    for prop, i, seq, spans, image_positions in checkable_proposals(rec.proposals, outputs,
                                                                     kind):
        p = prop["position"]  # the tree's root is token p + 1
        prompt_len = len(outputs[i].prompt_token_ids)
        tree = prop["tree"]
        assert len(tree["levels"]) == options.expansions
        embeds, hidden = rec.reference_inputs(prop["req_id"], seq, p, image_positions, embed)
        ref = ReferenceDraft(weights, dims, lm_head, embed)
        out = ref.prefill(embeds, hidden, embed[seq[p + 1]],
                          [s for s in spans if s.end <= p + 1])
        if p + 1 < prompt_len:
            # A chunk of a prompt still in prefill: vLLM discards its tree, whose paths may
            # run over the prompt's image slots; only the root's view of the context counts.
            logits = ref.logits(out)
            diff = (tree["root"] - logits.log_softmax(-1)).abs().max().item()
            assert diff <= LOGIT_TOL * max(1.0, logits.abs().max().item()), (names[i], p)
            continue
        n, w = check_tree(tree, PathOracle(ref, out), k, options.num_nodes, (names[i], p))
        nodes += n
        worst = max(worst, w)
        steps[names[i]] += 1
    assert all(n >= 5 for n in steps.values()), steps
    print(f"{kind}: tree steps checked {steps}, expanded nodes checked {nodes}, "
          f"worst log-prob diff {worst:.2e}")
