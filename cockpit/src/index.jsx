import "@patternfly/react-core/dist/styles/base.css";
import "./app.css";

import React from "react";
import { createRoot } from "react-dom/client";

import { App } from "./app.jsx";

createRoot(document.getElementById("app")).render(<App />);
