"""An independent model of votequorum's decision, to judge what each simulated node says.

Written from corosync's votequorum(5) and votequorum.c's rules, not from
cmanlk/services/votequorum/policy.py: the checker (cmanlk/sim/service_checks.py) feeds it every
QuorumChanged a node's clients were told of, in order, and compares. Inputs it takes as given
(they are set by operators, by last_man_standing's window or by other nodes' messages): the
members and their votes, and the highest expected votes among the members. What it decides:

- quorum = ⌊E/2⌋+1 (E: highest expected votes), never below ⌊T/2⌋+1 (T: total votes of the
  members); with two_node and at most two members, 1;
- quorate ⇔ T ≥ quorum (a node's own, higher quorum may hold it inquorate: votequorum's quorum
  only falls when something allows it), except:
  - wait_for_all: from the start and again after each loss of quorum, not quorate until T has
    reached E once (a node told WFA is still pending must not be quorate);
  - auto_tie_breaker: a half (T = ⌊E/2⌋ as corosync has it, so with odd E one less than half,
    where votequorum is stricter and takes no tie) is quorate only for the part holding the
    tie-breaker (lowest or highest id of the last quorate membership, or a
    listed node present once a membership was quorate);
- expected votes never below the total votes of the members.

Each check returns a list of mismatch texts (empty: the node agrees with the model). The model is
permissive in one place: an exact half with auto_tie_breaker may be inquorate where the model
allows quorum (votequorum also requires that the nodes missing since its last membership carry
fewer than `quorum` votes — cmanlkd counts votes where corosync counts nodes — which depends on
aborted syncs the clients never see), and which half holds the tie-breaker (the last
quorate membership votequorum saw may be one no client was told of): an exact half with
auto_tie_breaker is accepted either way (two quorate halves are quorum-split's to report).
"""

from __future__ import annotations

from cmanlk.services.votequorum.policy import AtbMode, QuorumPolicy
from cmanlk.sim.stackrecords import QuorumSeen
from cmanlk.types import NodeId


class VqModel:
    """The model for one node incarnation under its resolved `policy`."""

    def __init__(self, policy: QuorumPolicy) -> None:
        self.policy = policy
        self.wfa_pending = policy.wait_for_all
        self.last_quorate: tuple[NodeId, ...] = ()
        self.previous: tuple[NodeId, ...] = ()
        self.members: tuple[NodeId, ...] = ()

    def judge(self, rec: QuorumSeen) -> list[str]:
        """Compare one notification with the model; update the model's history."""
        p = self.policy
        if rec.members != self.members:
            self.previous, self.members = self.members, rec.members
        total = sum(v for _, v in rec.votes)
        e = rec.highest_expected
        quorum = max(e // 2 + 1, total // 2 + 1)
        if p.two_node and len(rec.members) <= 2:
            quorum = 1
        wrong: list[str] = []
        if rec.expected < total:
            wrong.append(f"expected votes {rec.expected} below the members' total {total}")
        if rec.quorum < quorum:
            wrong.append(f"quorum {rec.quorum} below the model's {quorum} (E={e} T={total})")
        if self.wfa_pending and total >= e:
            self.wfa_pending = False
        if not rec.wfa_status and self.wfa_pending:
            self.wfa_pending = False  # a peer that saw everyone, or an operator, cleared it
        quorate = total >= quorum
        tie = False
        # votequorum compares with its own expected votes there, the quorum with the highest
        if p.auto_tie_breaker is not AtbMode.NONE and total in (e // 2, rec.expected // 2) and not quorate:
            # which node breaks the tie comes from the last quorate membership votequorum saw,
            # which may be one its clients were never told of (a decision inside a sync): the
            # model accepts either answer here; two quorate halves are the split check's to catch
            tie = True
        if p.wait_for_all and (self.wfa_pending or rec.wfa_status):
            if rec.quorate:
                wrong.append(f"quorate while wait_for_all waits (T={total} E={e})")
        elif rec.quorate and not quorate and not tie:
            atb = p.auto_tie_breaker is not AtbMode.NONE
            why = "the tie-breaker is not here" if atb else f"quorum {quorum}"
            wrong.append(f"quorate with T={total} of E={e} ({why})")
        elif not rec.quorate and total >= max(quorum, rec.quorum):
            # votequorum's quorum is sticky (it only falls when an operator, last_man_standing or
            # a leaving node allows it, and allow_downscale's barrier holds it up): a node's own
            # quorum above the model's is stricter, not wrong; below it is reported above
            wrong.append(f"not quorate with T={total} ≥ quorum {rec.quorum} (E={e})")
        if rec.quorate:
            self.last_quorate = rec.members
        elif p.wait_for_all:
            self.wfa_pending = True
        return wrong
