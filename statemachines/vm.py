"""The VM's lifecycle table: what happens to a provisioned VM after its request is done.

A VM record starts where its provisioning request ends (``done``), in ``stopped``. It
rests in ``stopped``, ``running``, ``paused`` or ``crashed`` until an operation of its
owner (start, stop, force off, reboot, delete) or a libvirt event moves it. The states of
an operation in progress (``starting``, ``stopping``, ...) have a step, run by the same
engine as the provisioning steps; the step is durable before it acts. libvirt's lifecycle
events move the resting states (the guest powered itself off, it crashed, an
administrator ran ``virsh destroy`` or ``virsh undefine``). A domain undefined behind
provisiond's back leaves its VM ``vanished``, its storage untouched (an administrator's
dumpxml, undefine, define, or a rename, brings it back); only a delete gives the storage
back. While its host is
unreachable a VM is ``unknown``; after a restart or a lost connection the real state is
looked up, since events in the gap are lost.

Its transitions go to the same log as the request's, so one timeline runs from
``requested`` to ``deleted``.
"""

from __future__ import annotations

import enum

from statemachines.table import DocumentedState, StateTable, Transition


class VmState(DocumentedState):
    """A provisioned VM's state; each member's docstring says what it means."""

    STOPPED = ("stopped", "Defined in libvirt and shut off. Resting.")
    STARTING = ("starting", "Asked to start; waiting for libvirt's STARTED event.")
    RUNNING = ("running", "Running, as libvirt last said. Resting.")
    PAUSED = ("paused", "Suspended behind provisiond's back (virsh suspend). Resting.")
    CRASHED = ("crashed", "The guest crashed or QEMU failed; it can be started or deleted. "
                          "Resting.")
    STOPPING = ("stopping", "An ACPI shutdown was sent; forced off if the guest has not "
                            "stopped within stop_timeout.")
    POWERING_OFF = ("powering-off", "Being forced off (virsh destroy).")
    REBOOTING = ("rebooting", "An ACPI reboot was sent.")
    INSTALLED = ("installed", "A kickstart VM's installer powered off for the first time: "
                              "its domain is being redefined to boot from its disk.")
    DELETING = ("deleting", "Being forced off if running, undefined, and its storage given "
                            "back (a created volume deleted, a reused one wiped).")
    DELETED = ("deleted", "Gone from libvirt; its storage and its share of the quota given "
                          "back. Terminal.")
    VANISHED = ("vanished", "Its domain was undefined behind provisiond's back (virsh "
                            "undefine, or a rename) or was not found when looked up. Its "
                            "storage and its share of the quota are kept: the domain may be "
                            "defined again (back to stopped); a delete gives them back. "
                            "Resting.")
    UNKNOWN = ("unknown", "Its host is unreachable, so what libvirt would say is not known; "
                          "looked up again when the host is back, and no operation until "
                          "then. Resting.")


class VmTrigger(enum.StrEnum):
    """What moves a VM: the owner's operations, their steps' outcomes, libvirt's events."""

    START = "start"
    STOP = "stop"
    FORCE_OFF = "force_off"
    REBOOT = "reboot"
    DELETE = "delete"
    STARTED = "started"
    STOPPED = "stopped"
    REBOOTED = "rebooted"
    DELETED = "deleted"
    CRASHED = "crashed"
    PAUSED = "paused"
    RESUMED = "resumed"
    VANISHED = "vanished"
    HOST_LOST = "host_lost"
    INSTALLER_DONE = "installer_done"
    FAIL = "fail"


RESTING: frozenset[VmState] = frozenset(
    {VmState.STOPPED, VmState.RUNNING, VmState.PAUSED, VmState.CRASHED, VmState.VANISHED,
     VmState.UNKNOWN})
"""States with no step: the VM waits there for an operation or an event."""

TERMINAL: frozenset[VmState] = frozenset({VmState.DELETED})
"""States a VM never leaves."""

ACTS_OUTSIDE: frozenset[VmState] = frozenset(
    {VmState.STARTING, VmState.STOPPING, VmState.POWERING_OFF, VmState.REBOOTING,
     VmState.DELETING, VmState.INSTALLED})
"""Every operation acts on libvirt: its state is on disk before its step runs."""

_ALIVE = (VmState.RUNNING, VmState.PAUSED)
_OWNER = "operation by the owner or a CLOUD_ADMIN"

TRANSITIONS: tuple[Transition[VmState], ...] = (
    # Operations.
    *(Transition(VmTrigger.START, s, VmState.STARTING, _OWNER)
      for s in (VmState.STOPPED, VmState.CRASHED)),
    *(Transition(VmTrigger.STOP, s, VmState.STOPPING, _OWNER) for s in _ALIVE),
    *(Transition(VmTrigger.FORCE_OFF, s, VmState.POWERING_OFF, _OWNER)
      for s in (*_ALIVE, VmState.STOPPING)),
    Transition(VmTrigger.REBOOT, VmState.RUNNING, VmState.REBOOTING, _OWNER),
    *(Transition(VmTrigger.DELETE, s, VmState.DELETING, _OWNER)
      for s in (VmState.STOPPED, *_ALIVE, VmState.CRASHED, VmState.VANISHED)),
    # The operations' steps.
    Transition(VmTrigger.STARTED, VmState.STARTING, VmState.RUNNING,
               "step start: libvirt's STARTED event"),
    Transition(VmTrigger.STOPPED, VmState.STOPPING, VmState.STOPPED,
               "step stop: libvirt's STOPPED event (shut down, or forced off after "
               "stop_timeout)"),
    Transition(VmTrigger.STOPPED, VmState.POWERING_OFF, VmState.STOPPED,
               "step power_off: destroyed"),
    Transition(VmTrigger.REBOOTED, VmState.REBOOTING, VmState.RUNNING, "step reboot"),
    Transition(VmTrigger.DELETED, VmState.DELETING, VmState.DELETED,
               "step delete: undefined, storage given back"),
    Transition(VmTrigger.FAIL, VmState.STARTING, VmState.STOPPED,
               "engine: libvirt refused to start it"),
    Transition(VmTrigger.FAIL, VmState.STOPPING, VmState.RUNNING,
               "engine: libvirt refused to stop it"),
    Transition(VmTrigger.FAIL, VmState.POWERING_OFF, VmState.RUNNING,
               "engine: libvirt refused to force it off"),
    Transition(VmTrigger.FAIL, VmState.REBOOTING, VmState.RUNNING,
               "engine: libvirt refused to reboot it"),
    Transition(VmTrigger.FAIL, VmState.DELETING, VmState.STOPPED,
               "engine: libvirt refused to undefine it (delete again)"),
    Transition(VmTrigger.INSTALLER_DONE, VmState.RUNNING, VmState.INSTALLED,
               "event STOPPED of a kickstart VM still booting its installer directly"),
    Transition(VmTrigger.STOPPED, VmState.INSTALLED, VmState.STOPPED,
               "step finish_install: redefined without the kernel, initrd and cmdline"),
    Transition(VmTrigger.FAIL, VmState.INSTALLED, VmState.STOPPED,
               "engine: libvirt refused the redefine (its next start runs the installer "
               "again)"),
    # libvirt's events, behind provisiond's back (and the look after a reconnect).
    *(Transition(VmTrigger.STARTED, s, VmState.RUNNING, "event STARTED")
      for s in (VmState.STOPPED, VmState.CRASHED)),
    *(Transition(VmTrigger.STOPPED, s, VmState.STOPPED, "event STOPPED (shut down or "
                 "destroyed)") for s in _ALIVE),
    *(Transition(VmTrigger.CRASHED, s, VmState.CRASHED, "event STOPPED (failed) or "
                 "CRASHED") for s in _ALIVE),
    Transition(VmTrigger.PAUSED, VmState.RUNNING, VmState.PAUSED, "event SUSPENDED"),
    Transition(VmTrigger.RESUMED, VmState.PAUSED, VmState.RUNNING, "event RESUMED"),
    *(Transition(VmTrigger.VANISHED, s, VmState.VANISHED, "event UNDEFINED (virsh "
                 "undefine, or a rename): its storage is kept")
      for s in (VmState.STOPPED, *_ALIVE, VmState.CRASHED)),
    *(Transition(trigger, VmState.VANISHED, dest, f"looked up (after a reconnect, or an "
                                                  f"event DEFINED): defined again, {seen}")
      for trigger, dest, seen in (
          (VmTrigger.STARTED, VmState.RUNNING, "running"),
          (VmTrigger.PAUSED, VmState.PAUSED, "paused"),
          (VmTrigger.STOPPED, VmState.STOPPED, "shut off"),
          (VmTrigger.CRASHED, VmState.CRASHED, "crashed"))),
    # The host going away, and coming back: its real state is looked up.
    *(Transition(VmTrigger.HOST_LOST, s, VmState.UNKNOWN, "the connection to its host was "
                 "lost, or the host is unreachable at start")
      for s in (VmState.STOPPED, *_ALIVE, VmState.CRASHED, VmState.VANISHED)),
    *(Transition(trigger, VmState.UNKNOWN, dest, f"host back: looked up, {seen}")
      for trigger, dest, seen in (
          (VmTrigger.STARTED, VmState.RUNNING, "running"),
          (VmTrigger.PAUSED, VmState.PAUSED, "paused"),
          (VmTrigger.STOPPED, VmState.STOPPED, "shut off"),
          (VmTrigger.CRASHED, VmState.CRASHED, "crashed"),
          (VmTrigger.VANISHED, VmState.VANISHED, "undefined meanwhile: its storage is "
                                                 "kept"))),
)

TABLE: StateTable[VmState] = StateTable(
    name="vm",
    noun="vm",
    title="VM lifecycle states",
    source="statemachines/vm.py",
    states=VmState,
    triggers=VmTrigger,
    transitions=TRANSITIONS,
    initial=VmState.STOPPED,
    terminal=TERMINAL,
    acts_outside=ACTS_OUTSIDE,
    fail=VmTrigger.FAIL,
    resting=RESTING,
)
"""The VM lifecycle table, as the engine and the docs take it."""
