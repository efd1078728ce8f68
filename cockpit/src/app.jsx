import React, { useCallback, useEffect, useRef, useState } from "react";
import {
    Alert, AlertActionCloseButton, AlertGroup, Content, EmptyState, EmptyStateBody, List, ListItem,
    PageSection, Spinner, Tab, Tabs, TabTitleText, Title,
} from "@patternfly/react-core";

import { connect } from "./api.js";
import { Admin } from "./admin.jsx";
import { Catalog, CreateForm } from "./catalog.jsx";
import { Diagrams } from "./diagrams.jsx";
import { Explain } from "./explain.jsx";
import { RequestDetails, RequestList } from "./requests.jsx";

const cockpit = window.cockpit;

const TABS = [
    ["vms", "Virtual machines"],
    ["catalog", "Catalog"],
    ["create", "Create a VM"],
    ["explain", "Placement dry run"],
    ["admin", "Administration"],
    ["diagrams", "State diagrams"],
];

function usePath() {
    const [path, setPath] = useState(cockpit.location.path);
    useEffect(() => {
        const changed = () => setPath(cockpit.location.path);
        cockpit.addEventListener("locationchanged", changed);
        return () => cockpit.removeEventListener("locationchanged", changed);
    }, []);
    // the socket (development, tests) stays in the URL from view to view
    const go = useCallback(parts => cockpit.location.go(parts, cockpit.location.options), []);
    return [path, go];
}

function Unreachable({ error }) {
    return (
        <EmptyState titleText="provisiond is not reachable" headingLevel="h2" status="danger" data-testid="unreachable">
            <EmptyStateBody>
                <p>No provisiond answered <code>GET /v1/health</code> on the sockets tried, in this order:</p>
                <List className="pd-tried" aria-label="Sockets tried">
                    {(error.tried || []).map(t => (
                        <ListItem key={t.socket}><code>{t.socket}</code>: {t.error}</ListItem>
                    ))}
                </List>
                <p>Start the system service (<code>systemctl start provisiond.socket</code>, and be a member of the group
                    {" "}<code>provisiond</code>), or your own daemon, or give the socket's path in the page's URL
                    as <code>?socket=PATH</code>.</p>
            </EmptyStateBody>
        </EmptyState>
    );
}

export function App() {
    const [conn, setConn] = useState(null);
    const [connError, setConnError] = useState(null);
    const [user, setUser] = useState(null);
    const [catalog, setCatalog] = useState(null);
    const [catalogError, setCatalogError] = useState(null);
    // Who the daemon says the user is: the Administration tab is for CLOUD_ADMINs only.
    const [whoami, setWhoami] = useState(null);
    const [requests, setRequests] = useState(null);
    const [requestsError, setRequestsError] = useState(null);
    const [states, setStates] = useState(null);
    const [statesError, setStatesError] = useState(null);
    const [alerts, setAlerts] = useState([]);
    const [explainPreset, setExplainPreset] = useState(null);
    const [path, go] = usePath();
    const alertId = useRef(0);

    const client = conn?.client;
    // Shown while not known yet (and to a daemon that cannot say): the daemon refuses
    // a non-admin's reconciler anyway, in its own words.
    const administers = whoami === null || whoami.privileges.CLOUD_ADMIN.length > 0;
    const tab = TABS.some(([key]) => key === path[0]) && (path[0] !== "admin" || administers)
        ? path[0]
        : "vms";
    const selected = tab === "vms" || tab === "admin" ? path[1] : null;

    const notify = useCallback((variant, title) => {
        const key = ++alertId.current;
        setAlerts(list => [...list, { key, variant, title }]);
        setTimeout(() => setAlerts(list => list.filter(a => a.key !== key)), 8000);
    }, []);

    useEffect(() => {
        connect().then(c => {
            // for the browser's console and the tests: the client the page uses
            window.provisiondPage = { client: c.client };
            setConn(c);
        }).catch(setConnError);
        cockpit.user().then(u => setUser(u.name)).catch(() => {});
        fetch("states.json").then(r => {
            if (!r.ok)
                throw new Error(`states.json: ${r.status} ${r.statusText}`);
            return r.json();
        }).then(setStates).catch(setStatesError);
    }, []);

    const loadCatalog = useCallback(() => {
        if (!client)
            return;
        client.catalog().then(c => { setCatalog(c); setCatalogError(null) }).catch(setCatalogError);
    }, [client]);

    const loadRequests = useCallback(() => {
        if (!client)
            return Promise.resolve();
        return client.list().then(r => { setRequests(r.requests); setRequestsError(null) }).catch(setRequestsError);
    }, [client]);

    useEffect(() => { loadCatalog() }, [loadCatalog]);

    useEffect(() => {
        if (client)
            client.whoami().then(setWhoami).catch(() => setWhoami(null));
    }, [client]);

    // The list: every 5 s while shown (the request shown follows itself with long polls).
    useEffect(() => {
        if (!client)
            return;
        loadRequests();
        const timer = setInterval(() => {
            if (!document.hidden)
                loadRequests();
        }, 5000);
        return () => clearInterval(timer);
    }, [client, loadRequests]);

    /* "Start when ready": wait for the request to end (long polls), then start its VM. */
    const startWhenReady = useCallback(async request => {
        let r = request;
        try {
            while (r.state !== "done" && r.state !== "failed")
                r = await client.get(r.id, { wait: 60 });
            if (r.state === "failed") {
                notify("danger", `Request ${r.name} failed: ${r.reason || "no reason given"}; not started`);
                return;
            }
            await client.operate(r.id, "start");
            notify("info", `Start accepted for VM ${r.name}`);
        } catch (e) {
            notify("danger", `VM ${r.name} was not started: ${e.message}`);
        }
        loadRequests();
    }, [client, notify, loadRequests]);

    function created(request, start) {
        loadRequests();
        loadCatalog();
        if (start)
            startWhenReady(request);
        go(["vms", request.id]);
    }

    const vmTable = states?.tables.find(t => t.name === "vm");
    const catalogUser = catalog?.user || user;
    const open = id => go([tab === "admin" ? "admin" : "vms", id]);

    let body;
    if (connError) {
        body = <Unreachable error={connError} />;
    } else if (!conn) {
        body = <EmptyState titleText="Connecting to provisiond" headingLevel="h2" icon={Spinner} />;
    } else {
        const details = selected
            ? <RequestDetails client={client} id={selected} vmTable={vmTable}
                              onBack={() => go([tab])} onChanged={() => { loadRequests(); loadCatalog() }} />
            : null;
        body = (
            <Tabs activeKey={tab} onSelect={(_e, key) => go([key])} aria-label="provisiond views"
                  mountOnEnter unmountOnExit className="pd-tabs">
                <Tab eventKey="vms" title={<TabTitleText>Virtual machines</TabTitleText>}>
                    <div className="pd-tab-body">
                        {details || <RequestList requests={requests} error={requestsError} user={catalogUser}
                                                 onOpen={open} onRefresh={loadRequests} />}
                    </div>
                </Tab>
                <Tab eventKey="catalog" title={<TabTitleText>Catalog</TabTitleText>}>
                    <div className="pd-tab-body"><Catalog catalog={catalog} error={catalogError} /></div>
                </Tab>
                <Tab eventKey="create" title={<TabTitleText>Create a VM</TabTitleText>}>
                    <div className="pd-tab-body">
                        <CreateForm client={client} catalog={catalog} catalogError={catalogError} onCreated={created}
                                    onExplain={preset => { setExplainPreset(preset); go(["explain"]) }} />
                    </div>
                </Tab>
                <Tab eventKey="explain" title={<TabTitleText>Placement dry run</TabTitleText>}>
                    <div className="pd-tab-body">
                        <Explain client={client} catalog={catalog} catalogError={catalogError} preset={explainPreset} />
                    </div>
                </Tab>
                {administers && (
                    <Tab eventKey="admin" title={<TabTitleText>Administration</TabTitleText>}>
                        <div className="pd-tab-body">
                            {details || <Admin client={client} requests={requests} user={catalogUser} onOpen={open} />}
                        </div>
                    </Tab>
                )}
                <Tab eventKey="diagrams" title={<TabTitleText>State diagrams</TabTitleText>}>
                    <div className="pd-tab-body"><Diagrams states={states} error={statesError} /></div>
                </Tab>
            </Tabs>
        );
    }

    return (
        <div className="pd-page">
            <PageSection className="pd-header" aria-label="provisiond">
                <Title headingLevel="h1">Virtual machines (provisiond)</Title>
                {conn && (
                    <Content component="p" className="pd-muted" data-testid="connection">
                        provisiond {conn.health.version} on <code>{conn.client.socket}</code>
                        {catalogUser ? <> as <strong>{catalogUser}</strong> (your own identity: the daemon checks your grants)</> : null}
                    </Content>
                )}
            </PageSection>
            <PageSection className="pd-body">
                {body}
            </PageSection>
            <AlertGroup isToast isLiveRegion>
                {alerts.map(a => (
                    <Alert key={a.key} variant={a.variant} title={a.title}
                           actionClose={<AlertActionCloseButton onClose={() => setAlerts(l => l.filter(x => x.key !== a.key))} />} />
                ))}
            </AlertGroup>
        </div>
    );
}
