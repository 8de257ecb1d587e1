// FewStep frontend extension (schedule graphs are added by the web module of the pack).
import { app } from "../../scripts/app.js";

app.registerExtension({ name: "FewStep.core" });
