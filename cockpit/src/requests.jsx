import React, { useEffect, useRef, useState } from "react";
import {
    Breadcrumb, BreadcrumbItem, Button, DescriptionList, DescriptionListDescription,
    DescriptionListGroup, DescriptionListTerm, EmptyState, EmptyStateBody, Flex, FlexItem, FormSelect,
    FormSelectOption, Modal, ModalBody, ModalFooter, ModalHeader, Switch, Toolbar, ToolbarContent,
    ToolbarItem,
} from "@patternfly/react-core";
import { Table, Caption, Thead, Tbody, Tr, Th, Td } from "@patternfly/react-table";

import { TERMINAL_STATES, VM_BUSY_STATES } from "./api.js";
import { Console, Display } from "./sessions.jsx";
import {
    Clock, ErrorAlert, RequestState, Section, VmState, allowed, between, memory, when,
} from "./util.jsx";

export function inProgress(request) {
    if (!request)
        return false;
    if (!TERMINAL_STATES.includes(request.state))
        return true;
    return !!(request.vm && VM_BUSY_STATES.includes(request.vm.state));
}

/* The table of requests; `showOwner` for the administration view. */
export function RequestTable({ requests, onOpen, showOwner = false, caption, label }) {
    if (!requests.length) {
        return (
            <EmptyState titleText="No requests" headingLevel="h3">
                <EmptyStateBody>Nothing to show here yet.</EmptyStateBody>
            </EmptyState>
        );
    }
    return (
        <Table aria-label={label} variant="compact" className="pd-table">
            {caption && <Caption>{caption}</Caption>}
            <Thead>
                <Tr>
                    <Th>Name</Th>
                    {showOwner && <Th>Owner</Th>}
                    <Th>Template</Th>
                    <Th>Size</Th>
                    <Th>Resource pool</Th>
                    <Th>Request</Th>
                    <Th>VM</Th>
                    <Th>Created</Th>
                </Tr>
            </Thead>
            <Tbody>
                {requests.map(r => (
                    <Tr key={r.id} data-request-id={r.id} data-testid="request-row">
                        <Td dataLabel="Name">
                            <Button variant="link" isInline onClick={() => onOpen(r.id)}>
                                {r.name}
                            </Button>
                        </Td>
                        {showOwner && <Td dataLabel="Owner">{r.owner}</Td>}
                        <Td dataLabel="Template">{r.template}</Td>
                        <Td dataLabel="Size">{r.size}</Td>
                        <Td dataLabel="Resource pool">{r.resource_pool}</Td>
                        <Td dataLabel="Request"><RequestState state={r.state} /></Td>
                        <Td dataLabel="VM"><VmState vm={r.vm} /></Td>
                        <Td dataLabel="Created">{when(r.created_at)}</Td>
                    </Tr>
                ))}
            </Tbody>
        </Table>
    );
}

export function RequestList({ requests, error, user, onOpen, onRefresh }) {
    const [showDeleted, setShowDeleted] = useState(false);
    const [state, setState] = useState("");
    const mine = (requests || []).filter(r => r.owner === user)
            .filter(r => showDeleted || !(r.vm && r.vm.state === "deleted"))
            .filter(r => !state || r.state === state)
            .sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    return (
        <Section id="requests" title="Your VMs and requests">
            <Toolbar>
                <ToolbarContent>
                    <ToolbarItem>
                        <FormSelect id="requests-state" aria-label="Request state" value={state}
                                    onChange={(_e, v) => setState(v)}>
                            <FormSelectOption value="" label="Any request state" />
                            {["requested", "authorized", "storage-searching", "storage-creating", "seeding",
                                "defining", "done", "failed"].map(s => <FormSelectOption key={s} value={s} label={s} />)}
                        </FormSelect>
                    </ToolbarItem>
                    <ToolbarItem>
                        <Switch id="requests-show-deleted" label="Show deleted VMs" isChecked={showDeleted}
                                onChange={(_e, v) => setShowDeleted(v)} />
                    </ToolbarItem>
                    <ToolbarItem>
                        <Button variant="secondary" onClick={onRefresh}>Refresh</Button>
                    </ToolbarItem>
                </ToolbarContent>
            </Toolbar>
            <ErrorAlert error={error} title="Your requests could not be read" />
            {requests && <RequestTable requests={mine} onOpen={onOpen} label="Your VMs and requests" />}
        </Section>
    );
}

const OPERATION_WORDS = {
    start: "Start", stop: "Stop", "force-stop": "Force stop", reboot: "Reboot", delete: "Delete",
};

function Actions({ client, request, vmTable, onChanged }) {
    const [busy, setBusy] = useState(null);
    const [error, setError] = useState(null);
    const [confirm, setConfirm] = useState(null);
    const [accepted, setAccepted] = useState(null);
    const name = request.name;
    const vmState = request.vm?.state;

    function run(operation) {
        setConfirm(null);
        setBusy(operation);
        setError(null);
        setAccepted(null);
        const call = operation === "cancel"
            ? client.cancel(request.id)
            : client.operate(request.id, operation === "force-stop" ? "stop" : operation, operation === "force-stop");
        call.then(answer => {
            setBusy(null);
            setAccepted(`${OPERATION_WORDS[operation] || "Cancel"} accepted for VM ${name}`);
            onChanged(answer);
        }).catch(e => { setBusy(null); setError(e) });
    }

    const destructive = ["delete", "force-stop", "cancel"];
    const ask = operation => (destructive.includes(operation) ? setConfirm(operation) : run(operation));

    return (
        <div className="pd-actions" role="group" aria-label={`Actions on VM ${name}`}>
            <Flex spaceItems={{ default: "spaceItemsSm" }}>
                {["start", "stop", "force-stop", "reboot", "delete"].map(op => (
                    <FlexItem key={op}>
                        <Button variant={op === "delete" || op === "force-stop" ? "danger" : op === "start" ? "primary" : "secondary"}
                                isDisabled={!allowed(vmTable, vmState, op) || busy !== null}
                                isLoading={busy === op}
                                aria-label={`${OPERATION_WORDS[op]} VM ${name}`}
                                onClick={() => ask(op)}>
                            {OPERATION_WORDS[op]}
                        </Button>
                    </FlexItem>
                ))}
                {!TERMINAL_STATES.includes(request.state) && (
                    <FlexItem>
                        <Button variant="warning" aria-label={`Cancel request ${name}`} onClick={() => ask("cancel")}
                                isDisabled={busy !== null} isLoading={busy === "cancel"}>
                            Cancel request
                        </Button>
                    </FlexItem>
                )}
            </Flex>
            <p className="pd-muted pd-accepted" aria-live="polite" data-testid="action-status">{accepted || ""}</p>
            <ErrorAlert error={error} title={`The operation on VM ${name} was refused`} onClose={() => setError(null)} />
            {confirm && (
                <Modal isOpen variant="small" onClose={() => setConfirm(null)} aria-labelledby="confirm-title">
                    <ModalHeader title={confirm === "cancel" ? `Cancel request ${name}?` : `${OPERATION_WORDS[confirm]} VM ${name}?`}
                                 labelId="confirm-title" titleIconVariant="warning" />
                    <ModalBody>
                        {confirm === "delete" && "The VM is forced off if it runs, undefined, and its storage given back (a volume it created is deleted)."}
                        {confirm === "force-stop" && "The VM is powered off at once, without a shutdown."}
                        {confirm === "cancel" && "The request fails; what it made so far is rolled back."}
                    </ModalBody>
                    <ModalFooter>
                        <Button variant="danger" onClick={() => run(confirm)}>
                            {confirm === "cancel" ? "Cancel the request" : OPERATION_WORDS[confirm]}
                        </Button>
                        <Button variant="link" onClick={() => setConfirm(null)}>Keep it</Button>
                    </ModalFooter>
                </Modal>
            )}
        </div>
    );
}

function Timeline({ entries, request }) {
    const transitions = entries.filter(e => e.kind === "transition");
    return (
        <Section id="timeline" title={`Timeline of ${request.name}`} level="h3">
            <p className="pd-muted" aria-live="polite" data-testid="timeline-status">
                {inProgress(request) ? "Following live…" : `Request ${request.state}` +
                    (request.vm ? `, VM ${request.vm.state}` : "") + `; ${transitions.length} transitions`}
            </p>
            <Table aria-label={`Timeline of ${request.name}`} variant="compact" className="pd-table pd-timeline">
                <Thead>
                    <Tr><Th>Time</Th><Th>Kind</Th><Th>From</Th><Th>To</Th><Th>Trigger</Th><Th modifier="nowrap">Time in state</Th><Th>Detail</Th></Tr>
                </Thead>
                <Tbody>
                    {entries.map((e, i) => {
                        const previous = entries.slice(0, i).reverse().find(p => p.kind === "transition");
                        return (
                            <Tr key={i} className={`pd-log-${e.kind}`} data-testid="timeline-entry" data-kind={e.kind} data-to={e.to || ""}>
                                <Td dataLabel="Time" className="pd-nowrap"><Clock iso={e.at} /></Td>
                                <Td dataLabel="Kind">{e.kind}</Td>
                                <Td dataLabel="From">{e.from || ""}</Td>
                                <Td dataLabel="To">{e.kind === "transition" ? <strong>{e.to}</strong> : e.to || ""}</Td>
                                <Td dataLabel="Trigger">{e.trigger}</Td>
                                <Td dataLabel="Time in state">{e.kind === "transition" && previous ? between(previous.at, e.at) : ""}</Td>
                                <Td dataLabel="Detail" className="pd-detail">{e.detail}</Td>
                            </Tr>
                        );
                    })}
                </Tbody>
            </Table>
        </Section>
    );
}

function Addresses({ request }) {
    const addresses = request.vm?.addresses;
    return (
        <Section id="addresses" title="IP addresses" level="h3">
            {request.vm?.state !== "running"
                ? <p className="pd-muted">The VM is not running.</p>
                : !addresses
                    ? <p className="pd-muted">Looking…</p>
                    : !addresses.length
                        ? <p className="pd-muted">None known yet (no DHCP lease, guest agent or ARP entry).</p>
                        : (
                            <Table aria-label={`IP addresses of ${request.name}`} variant="compact" className="pd-table">
                                <Thead><Tr><Th>Interface</Th><Th>MAC</Th><Th>Address</Th><Th>Source</Th></Tr></Thead>
                                <Tbody>
                                    {addresses.map((a, i) => (
                                        <Tr key={i}>
                                            <Td dataLabel="Interface">{a.interface}</Td>
                                            <Td dataLabel="MAC">{a.mac}</Td>
                                            <Td dataLabel="Address">{a.address}/{a.prefix}</Td>
                                            <Td dataLabel="Source">{a.source}</Td>
                                        </Tr>
                                    ))}
                                </Tbody>
                            </Table>
                        )}
        </Section>
    );
}

/* Follows one request: GET ?wait= (answered when it ends, or after a second) and its log
 * while it or its VM's operation is in progress, as `provctl log --follow` does; every
 * few seconds at rest (libvirt may change it behind provisiond's back). */
function useFollow(client, id) {
    const [request, setRequest] = useState(null);
    const [entries, setEntries] = useState([]);
    const [error, setError] = useState(null);
    const kick = useRef(null);
    const current = useRef(null);

    useEffect(() => {
        let stopped = false;
        let timer = null;
        async function loop() {
            let busy = true;
            while (!stopped) {
                try {
                    let r = await client.get(id, { wait: busy ? 1 : null });
                    if (r.vm && r.vm.state === "running")
                        r = await client.get(id, { addresses: true });
                    const log = await client.log(id);
                    if (stopped)
                        return;
                    current.current = r;
                    setRequest(r);
                    setEntries(log.log || []);
                    setError(null);
                    busy = inProgress(r);
                } catch (e) {
                    if (stopped)
                        return;
                    setError(e);
                    busy = false;
                }
                if (!busy) {
                    await new Promise(resolve => {
                        kick.current = resolve;
                        timer = setTimeout(resolve, 5000);
                    });
                    clearTimeout(timer);
                    busy = current.current ? inProgress(current.current) : true;
                }
            }
        }
        setRequest(null);
        setEntries([]);
        loop();
        return () => {
            stopped = true;
            clearTimeout(timer);
            if (kick.current)
                kick.current();
        };
    }, [client, id]);

    const refresh = answer => {
        if (answer) {
            current.current = answer;
            setRequest(prev => ({ ...answer, vm: answer.vm ? { ...(prev?.vm || {}), ...answer.vm } : answer.vm }));
        }
        if (kick.current)
            kick.current();
    };
    return { request, entries, error, refresh };
}

export function RequestDetails({ client, id, vmTable, onBack, onChanged }) {
    const { request, entries, error, refresh } = useFollow(client, id);
    const name = request?.name || id;
    return (
        <Section id="request" title={request ? `VM ${request.name}` : "Request"}
                 actions={<Button variant="secondary" onClick={onBack}>Back to the list</Button>}>
            <Breadcrumb>
                <BreadcrumbItem to="#" onClick={e => { e.preventDefault(); onBack() }}>Your VMs and requests</BreadcrumbItem>
                <BreadcrumbItem isActive>{name}</BreadcrumbItem>
            </Breadcrumb>
            <ErrorAlert error={error} title={`Request ${id} could not be read`} />
            {request && (
                <>
                    <DescriptionList isHorizontal isCompact columnModifier={{ default: "2Col" }} aria-label={`Request ${request.name}`} className="pd-facts">
                        <Fact term="Request state"><RequestState state={request.state} />{request.reason ? <div className="pd-reason">{request.reason}</div> : null}</Fact>
                        <Fact term="VM state"><VmState vm={request.vm} />{request.vm?.reason ? <div className="pd-reason">{request.vm.reason}</div> : null}</Fact>
                        <Fact term="Template">{request.template}</Fact>
                        <Fact term="Size">{request.size}: {request.cpus} CPUs, {memory(request.memory_kib)}, {request.storage_gb} GiB</Fact>
                        <Fact term="Resource pool">{request.resource_pool} (hardware pool {request.hardware_pool})</Fact>
                        <Fact term="Host">{request.host || "not chosen yet"}</Fact>
                        <Fact term="Volume">{request.volume ? `${request.volume.pool}/${request.volume.name}` : "none yet"}</Fact>
                        <Fact term="Owner">{request.owner}</Fact>
                        <Fact term="Request id"><code>{request.id}</code></Fact>
                        <Fact term="Created">{when(request.created_at)}</Fact>
                    </DescriptionList>
                    <Actions client={client} request={request} vmTable={vmTable}
                             onChanged={answer => { refresh(answer); onChanged() }} />
                    <Timeline entries={entries} request={request} />
                    <Addresses request={request} />
                    <Console client={client} request={request} />
                    <Display client={client} request={request} />
                </>
            )}
        </Section>
    );
}

function Fact({ term, children }) {
    return (
        <DescriptionListGroup>
            <DescriptionListTerm>{term}</DescriptionListTerm>
            <DescriptionListDescription>{children}</DescriptionListDescription>
        </DescriptionListGroup>
    );
}
