"""The σ-graph widgets in a real browser: the host ComfyUI server with the pack, Debian's Chromium
headless over the DevTools protocol. Checks pixels on the widget canvas and on the screen, follows
widget edits and a queued prompt, loads the templates, collects console errors, and saves light and
dark screenshots under test-artifacts/browser/<frontend>-<renderer>/ (git-ignored).

Every test runs for each frontend of FEWSTEP_FRONTENDS (scripts/test.sh sets it per host; default:
the host's own) in both node renderers: the canvas (LiteGraph) and the Vue one ("Nodes 2.0", the
setting Comfy.VueNodes.Enabled in frontends 1.27 to 1.58 at least)."""
import base64
import io
import json
import os
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from tests.support.cdp_browser import BrowserError, Chromium, chromium_path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
APP = "window.comfyAPI.app.app"


def frontend_matrix():
    """FEWSTEP_FRONTENDS: comma-separated VERSION (the host's own frontend, its version checked) or
    VERSION@STATIC_ROOT (a comfyui-frontend-package static/ folder, served with --front-end-root;
    `bash scripts/browser.sh --frontend VERSION` installs one into the cache)."""
    entries = []
    for item in filter(None, os.environ.get("FEWSTEP_FRONTENDS", "").split(",")):
        version, _, root = item.strip().partition("@")
        entries.append((version, root or None))
    return entries or [(None, None)]


FRONTENDS = frontend_matrix()
RENDERERS = ("canvas", "vue")

if os.environ.get("FEWSTEP_SKIP_BROWSER") == "1":
    pytest.skip("FEWSTEP_SKIP_BROWSER=1", allow_module_level=True)

# Page helpers: pixel statistics of a node's graph canvas and screen rectangles.
HELPERS = r"""
window.__fs = {
  app: window.comfyAPI.app.app,
  node(id) { return this.app.graph.getNodeById(id); },
  graph(id) { return this.node(id)?.fewstepSigmaGraph; },
  imageData(id) {
    const c = this.graph(id).canvas;
    return c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  },
  // pixel i of data within tol (sum of channel differences) of rgb
  near(data, i, rgb, tol) {
    return rgb && Math.abs(data[i] - rgb[0]) + Math.abs(data[i + 1] - rgb[1]) + Math.abs(data[i + 2] - rgb[2]) <= tol;
  },
  pixels(id) {
    const c = this.graph(id).canvas;
    const colors = JSON.parse(c.dataset.colors || "{}");
    const data = this.imageData(id);
    const near = (i, rgb, tol) => this.near(data, i, rgb, tol);
    let curve = 0, stop = 0, ink = 0, hash = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (near(i, colors.curve, 60)) curve++;
      if (near(i, colors.stop, 60)) stop++;
      if (!near(i, colors.bg, 40)) ink++;
      hash = (Math.imul(hash, 31) + data[i] + 7 * data[i + 1] + 13 * data[i + 2]) | 0;
    }
    return { curve, stop, ink, hash, message: this.graph(id).message, width: c.width, height: c.height, state: c.dataset.state,
             theme: c.dataset.theme, colors, revision: Number(c.dataset.revision),
             sigmas: c.dataset.sigmas ? JSON.parse(c.dataset.sigmas) : null,
             caption: this.graph(id).caption.textContent, hover: c.dataset.hover || "" };
  },
  count(id, rgb, tol) {
    const data = this.imageData(id);
    let n = 0;
    for (let i = 0; i < data.length; i += 4) if (this.near(data, i, rgb, tol)) n++;
    return n;
  },
  rect(id) {
    const r = this.graph(id).canvas.getBoundingClientRect();
    return { x: r.x, y: r.y, width: r.width, height: r.height };
  },
  vue() { return Boolean(this.app.extensionManager?.setting?.get("Comfy.VueNodes.Enabled")); },
  nodeElement(id) { return document.querySelector(`[data-node-id="${id}"]`); },
  nodesRect(ids) {
    if (this.vue()) {  // Nodes 2.0: every node is a DOM element
      const rs = ids.map((id) => this.nodeElement(id).getBoundingClientRect());
      const x = Math.min(...rs.map((r) => r.x)), y = Math.min(...rs.map((r) => r.y));
      return { x, y, width: Math.max(...rs.map((r) => r.right)) - x, height: Math.max(...rs.map((r) => r.bottom)) - y };
    }
    const cv = this.app.canvas, ds = cv.ds, box = cv.canvas.getBoundingClientRect();
    const th = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
    for (const id of ids) {
      const n = this.node(id);
      x0 = Math.min(x0, (n.pos[0] + ds.offset[0]) * ds.scale + box.x);
      y0 = Math.min(y0, (n.pos[1] - th + ds.offset[1]) * ds.scale + box.y);
      x1 = Math.max(x1, (n.pos[0] + n.size[0] + ds.offset[0]) * ds.scale + box.x);
      y1 = Math.max(y1, (n.pos[1] + n.size[1] + ds.offset[1]) * ds.scale + box.y);
    }
    return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
  },
  widgetPoint(id, name, side) {
    // Screen point of a number widget's arrow or button (side -1: decrement, +1: increment).
    if (this.vue()) {
      // the DOM widget labelled with the input's name, then the nearest enclosing increment button
      // (1.49+: data-testid="increment"; 1.32: PrimeVue's data-pc-section="incrementbutton")
      const node = this.nodeElement(id), dir = side > 0 ? "increment" : "decrement";
      const sel = `[data-testid="${dir}"], [data-pc-section="${dir}button"]`;
      let el = node.querySelector(`[aria-label="${name}"]`);
      while (el && el !== node && !el.querySelector(sel)) el = el.parentElement;
      const r = el.querySelector(sel).getBoundingClientRect();
      return { x: r.x + r.width / 2, y: r.y + r.height / 2 };
    }
    const n = this.node(id), w = n.widgets.find((x) => x.name === name);
    const cv = this.app.canvas, ds = cv.ds, box = cv.canvas.getBoundingClientRect();
    const h = w.computedHeight ?? window.LiteGraph?.NODE_WIDGET_HEIGHT ?? 20;
    const lx = side > 0 ? n.size[0] - 22 : 22;
    return { x: (n.pos[0] + lx + ds.offset[0]) * ds.scale + box.x,
             y: (n.pos[1] + w.y + h / 2 + ds.offset[1]) * ds.scale + box.y };
  },
};
true
"""

# Frontend noise that is not ours: the page asks the internet (no network here) and optional user
# files that a fresh user directory does not have.
EXTERNAL_404 = ("/user.css", "/favicon.ico", "/api/userdata")


def is_ours(entry) -> bool:
    url = entry.get("url") or ""
    if urlparse(url).hostname not in (None, "", "127.0.0.1", "localhost"):
        return False
    blob = url + " " + (entry.get("text") or "")
    return any(k in blob for k in ("/extensions/ComfyUI-FewStep", "/fewstep/", "FewStep.sigmaGraph",
                                   "fewstep_sigma_graph"))


def is_noise(entry) -> bool:
    url = entry.get("url") or ""
    host = urlparse(url).hostname
    if host not in (None, "", "127.0.0.1", "localhost"):
        return True
    return "404" in (entry.get("text") or "") and any(p in url for p in EXTERNAL_404)


def problems(entries, strict=True):
    """The pack's errors and warnings; with strict (the host's own frontend) any page error too. A
    frontend other than the host's own logs its own errors (endpoints the server lacks), so there
    only the pack's count."""
    return [e for e in entries if e["level"] in ("error", "exception", "warning", "assert")
            and (is_ours(e) or (strict and e["level"] in ("error", "exception") and not is_noise(e)))]


class Page:
    def __init__(self, browser, server, frontend, renderer, strict):
        self.b, self.server = browser, server
        self.frontend, self.renderer, self.strict = frontend, renderer, strict
        self.artifacts = ARTIFACTS / f"{frontend or 'host'}-{renderer}"
        self.mark = 0

    def js(self, expr, timeout=60):
        return self.b.js(expr, timeout)

    def pixels(self, node_id):
        return self.js(f"window.__fs.pixels({node_id})")

    def load(self, workflow: dict):
        self.js(f"{APP}.loadGraphData({json.dumps(workflow)})")
        self.b.pause(0.5)

    def wait(self, expr, timeout=60):
        return self.b.wait_for(expr, timeout)

    def set_palette(self, palette):
        self.js(f"{APP}.extensionManager.setting.set('Comfy.ColorPalette', '{palette}')")
        # every graph on the page has redrawn in the new palette's colours
        self.wait("[...document.querySelectorAll('.fewstep-sigma-graph canvas')]"
                  f".every(c => c.dataset.theme === '{palette}')")
        self.b.pause(0.5)

    def screenshot(self, name, clip=None):
        return self.b.screenshot(self.artifacts / name, clip)

    def screen_pixels(self, node_id, curve_rgb, tol=60):
        """Curve-coloured pixels inside the widget's rectangle of a real screenshot: the graph is on
        the screen, not only in an off-screen canvas."""
        r = self.js(f"window.__fs.rect({node_id})")
        data = self.b.send("Page.captureScreenshot", format="png",
                           clip={**{k: r[k] for k in ("x", "y", "width", "height")}, "scale": 1})["data"]
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")).astype(int)
        return int((np.abs(img - np.asarray(curve_rgb[:3])).sum(axis=2) <= tol).sum())

    def park_mouse(self):
        # over empty canvas, away from tabs and menus whose hover pop-ups would cover the nodes
        self.b.mouse("mouseMoved", self.b.width - 300, self.b.height - 150)
        self.b.pause(0.3)

    def new_problems(self):
        return problems(self.b.console[self.mark:], self.strict)


def post_settings(server, settings):
    req = urllib.request.Request(server.url + "/settings", data=json.dumps(settings).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


@pytest.fixture(scope="module", params=FRONTENDS, ids=lambda f: f"frontend-{f[0] or 'host'}")
def ui_server(request, server, tmp_path_factory):
    """(server, frontend version, own): the shared server with the host's own frontend, or one
    serving another frontend from the cache (--front-end-root)."""
    version, root = request.param
    if root is None:
        yield server, version, True
        return
    if not (Path(root) / "index.html").is_file():
        pytest.fail(f"frontend {version} is not installed at {root}: `bash scripts/browser.sh --frontend {version}`")
    from tests.support.comfy_host import ComfyServer
    own = ComfyServer(tmp_path_factory.mktemp(f"frontend-{version}"), extra_args=["--front-end-root", root])
    try:
        yield own.start(), version, False
    finally:
        own.stop()


@pytest.fixture(scope="module", params=RENDERERS)
def page(request, ui_server, tmp_path_factory):
    server, version, own = ui_server
    renderer = request.param
    if chromium_path() is None:
        pytest.fail("Debian's Chromium is missing: `bash scripts/browser.sh` installs it "
                    "(scripts/test.sh runs it); FEWSTEP_SKIP_BROWSER=1 skips these tests")
    # the renderer as a user leaves it in the settings: the app starts in it
    post_settings(server, {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                           "Comfy.ColorPalette": "light", "Comfy.VueNodes.Enabled": renderer == "vue"})
    browser = Chromium(tmp_path_factory.mktemp("chromium"), width=1600, height=1000)
    p = Page(browser, server, version, renderer, strict=own)
    p.artifacts.mkdir(parents=True, exist_ok=True)
    try:
        browser.start()
        browser.send("Page.addScriptToEvaluateOnNewDocument",
                     source="localStorage.setItem('vueNodesBannerDismissed', 'true')")
        browser.goto(server.url)
        browser.wait_for(f"{APP}?.graph && {APP}.extensions?.some(e => e.name === 'FewStep.sigmaGraph') "
                         "&& window.LiteGraph?.registered_node_types?.FewStepPreviewSigmas", 120)
        browser.js(HELPERS)
        assert p.js("window.__fs.vue()") == (renderer == "vue")
        p.mark = len(browser.console)  # errors during the app's own start-up are not ours ...
        yield p
    finally:
        (p.artifacts / "console.json").write_text(json.dumps(browser.console, indent=1))
        browser.stop()


def test_app_start_has_no_errors_from_the_pack(page):
    ours = [e for e in page.b.console if is_ours(e) and e["level"] != "debug"]
    assert not ours, ours  # ... but none may come from FewStep, start-up included
    version = page.js("window.__COMFYUI_FRONTEND_VERSION__")
    print(f"\nfrontend {version} ({page.renderer} renderer), {page.js('navigator.userAgent')}")
    if page.frontend:
        assert version == page.frontend  # the matrix tests the frontend it names
    assert page.js("window.comfyAPI.app.app.extensions.filter(e => e.name.startsWith('FewStep')).length") >= 2


def test_preview_node_draws_core_sigmas_after_the_run(page):
    workflow = json.loads((REPO / "example_workflows" / "sigma_preview.json").read_text())
    page.load(workflow)
    page.wait("window.__fs.graph(3)?.canvas.dataset.state === 'empty'")
    before = page.pixels(3)
    assert before["curve"] == 0 and before["sigmas"] is None  # nothing drawn before the run
    assert before["ink"] > 50  # ... but the "run the prompt" message is
    # the widget is not part of the workflow or the prompt
    prompt = page.js(f"{APP}.graphToPrompt().then(p => p.output)")
    api_twin = json.loads((REPO / "example_workflows" / "api" / "sigma_preview_api.json").read_text())
    assert {k: v["inputs"] for k, v in prompt.items()} == {k: v["inputs"] for k, v in api_twin.items()}
    saved = page.js(f"{APP}.graph.serialize().nodes.find(n => n.id === 3).widgets_values")
    assert not saved

    page.js(f"{APP}.queuePrompt(0, 1)")
    page.wait("window.__fs.graph(3)?.canvas.dataset.state === 'ok'", 180)
    after = page.pixels(3)
    assert after["sigmas"][0] == pytest.approx(14.6146, rel=1e-4) and after["sigmas"][-1] == 0
    assert len(after["sigmas"]) == 9
    assert after["curve"] > 150, after  # the curve is drawn: pixels of the curve colour
    assert after["hash"] != before["hash"]
    assert "8 steps" in after["caption"] and "0:14.615" in after["caption"]
    assert page.screen_pixels(3, after["colors"]["curve"]) > 150  # and it is on the screen

    # hover reads out the value under the pointer
    r = page.js("window.__fs.rect(3)")
    page.b.mouse("mouseMoved", r["x"] + 38 + 2, r["y"] + r["height"] / 2)  # over step 0
    hover = page.wait("window.__fs.pixels(3).hover")
    assert hover.startswith("step 0: σ = 14.61"), hover
    page.park_mouse()
    page.screenshot("preview_light.png", page.js("window.__fs.nodesRect([1, 2, 3])"))
    assert not page.new_problems(), page.new_problems()


def test_preview_readable_in_light_and_dark(page):
    shots = {}
    for palette in ("light", "dark"):
        page.set_palette(palette)
        px = page.wait("(() => { const p = window.__fs.pixels(3); return p.theme === "
                       f"'{palette}' && p.state === 'ok' && p; }})()")
        bg, fg, curve = (px["colors"][k] for k in ("bg", "fg", "curve"))
        assert contrast(curve, bg) >= 3.0, (palette, curve, bg)  # WCAG 2.1 for graphics
        assert contrast(fg, bg) >= 4.5, (palette, fg, bg)        # and for text
        assert px["curve"] > 150
        shots[palette] = px
        page.screenshot(f"preview_{palette}.png", page.js("window.__fs.nodesRect([1, 2, 3])"))
    assert shots["light"]["colors"]["bg"] != shots["dark"]["colors"]["bg"]  # it follows the theme
    page.set_palette("light")
    assert not page.new_problems(), page.new_problems()


LIVE = (2, 3, 5)  # Karras, F-scheduler, timestep power in example_workflows/sigma_graphs.json


def widget_value(page, node_id, name):
    return page.js(f"window.__fs.node({node_id}).widgets.find(w => w.name === '{name}').value")


def set_widget(page, node_id, name, value, callback=True):
    """Sets a widget as the editor does (value, then its callback) or, with callback=False, as an
    extension might (value only, then a redraw)."""
    page.js(f"""(() => {{ const n = window.__fs.node({node_id}); const w = n.widgets.find(w => w.name === '{name}');
        w.value = {json.dumps(value)}; {'w.callback?.(w.value, window.__fs.app.canvas, n);' if callback else ''}
        window.__fs.app.graph.setDirtyCanvas(true, true); }})()""")


def wait_graph(page, node_id, condition="true", timeout=60):
    return page.wait(f"(() => {{ const p = window.__fs.pixels({node_id}); return ({condition}) && p; }})()", timeout)


def allowed_route_errors(entries, kind):
    """Network lines Chromium itself logs for a 400 answer (a bad value shown on the graph) or a
    refused request (server gone): expected in the tests that provoke them, nothing else."""
    keep = []
    for e in entries:
        if "/fewstep/sigmas" in (e.get("url") or "") and e["level"] == "error" and kind in e["text"]:
            continue
        keep.append(e)
    return keep


def test_live_graphs_on_every_pack_sigmas_node(page):
    workflow = json.loads((REPO / "example_workflows" / "sigma_graphs.json").read_text())
    page.load(workflow)
    page.wait(" && ".join(f"window.__fs.graph({i})?.canvas.dataset.state === 'ok'" for i in LIVE), 60)
    for node_id in LIVE:
        px = page.pixels(node_id)
        assert px["curve"] > 150, (node_id, px)
        assert page.screen_pixels(node_id, px["colors"]["curve"]) > 150, node_id
    karras, fsched, tpow = (page.pixels(i) for i in LIVE)
    # the server ran each node: Karras over the lab's SD table, the F-scheduler as 1024x6
    assert karras["sigmas"][0] == pytest.approx(14.6146, rel=1e-4) and karras["sigmas"][-1] == 0
    assert [round(v, 4) for v in fsched["sigmas"]][:3] == [14.6146, 5.2124, 2.4311]
    assert fsched["sigmas"][-1] == pytest.approx(0.0600, abs=2e-4)
    assert fsched["stop"] > 40 and karras["stop"] == 0  # σ_stop line only where the schedule stops above 0
    assert "σ_stop 0.06" in fsched["caption"] and "sd_discrete" in karras["caption"]
    assert len(tpow["sigmas"]) == 9
    assert page.js("window.__fs.graph(2).data.model.sigma_max") == pytest.approx(14.6146, rel=1e-4)
    page.park_mouse()
    assert not page.new_problems(), page.new_problems()


def test_live_graph_follows_widget_edits(page):
    before = page.pixels(3)
    pt = page.js("window.__fs.widgetPoint(3, 'steps', 1)")
    page.b.click(pt["x"], pt["y"])  # the right arrow of the steps widget, a real mouse click
    page.wait("window.__fs.node(3).widgets.find(w => w.name === 'steps').value === 7")
    after = wait_graph(page, 3, "p.state === 'ok' && p.sigmas?.length === 8")
    assert after["hash"] != before["hash"] and after["curve"] > 150
    # a value changed without a widget callback (another extension, a script) is picked up too
    set_widget(page, 3, "preset", "1024x8", callback=False)
    wait_graph(page, 3, "p.sigmas?.length === 9")
    set_widget(page, 3, "preset", "custom")
    set_widget(page, 3, "steps", 6)
    wait_graph(page, 3, "p.sigmas?.length === 7")
    # the model upstream decides the σ table: the lab in EDM mode moves Karras' range to 0.002-80
    set_widget(page, 1, "schedule", "edm")
    karras = wait_graph(page, 2, "p.sigmas && Math.abs(p.sigmas[0] - 80) < 1e-3")
    assert "edm" in karras["caption"]
    # ... and the timestep-power node refuses it: the node's own message, drawn instead of a curve
    tpow = wait_graph(page, 5, "p.state === 'error'")
    assert "EDM" in tpow["message"] and tpow["curve"] == 0 and tpow["ink"] > 100
    set_widget(page, 1, "schedule", "sd_discrete")
    wait_graph(page, 5, "p.state === 'ok'")
    wait_graph(page, 2, "p.sigmas && Math.abs(p.sigmas[0] - 14.6146) < 1e-3")
    # an impossible value gets the route's 400 with the parameter named
    set_widget(page, 3, "stop_index", 12)
    bad = wait_graph(page, 3, "p.state === 'error'")
    assert "stop_index" in bad["message"]
    set_widget(page, 3, "stop_index", 10)
    wait_graph(page, 3, "p.state === 'ok' && p.sigmas?.length === 7")
    assert not allowed_route_errors(page.new_problems(), "400"), page.new_problems()
    page.mark = len(page.b.console)


def test_graph_falls_back_when_the_server_is_unreachable(page):
    page.b.block_requests("*fewstep/sigmas*")
    try:
        set_widget(page, 2, "steps", 5)
        gone = wait_graph(page, 2, "p.state === 'offline'")
        assert "unreachable" in gone["message"] and gone["curve"] == 0
        assert page.b.blocked and widget_value(page, 2, "steps") == 5  # the node itself still works
        for _ in range(6):  # redraws while it is gone do not hammer the server: retried every few s
            page.js(f"{APP}.graph.setDirtyCanvas(true, true)")
            page.b.pause(0.25)
        assert len(page.b.blocked) <= 2, page.b.blocked
    finally:
        page.b.block_requests(None)
    set_widget(page, 2, "steps", 8)
    back = wait_graph(page, 2, "p.state === 'ok' && p.sigmas?.length === 9")
    assert back["curve"] > 150
    assert not allowed_route_errors(page.new_problems(), "ERR_CONNECTION_REFUSED"), page.new_problems()
    page.mark = len(page.b.console)


def test_preview_after_the_run_equals_the_live_graph(page):
    page.js(f"{APP}.queuePrompt(0, 1)")
    preview = wait_graph(page, 4, "p.state === 'ok'", 180)
    live = page.pixels(3)
    assert preview["sigmas"] == pytest.approx(live["sigmas"], rel=1e-6)
    assert preview["stop"] > 40 and preview["curve"] > 150
    # hover over the last point reads out σ_stop
    r = page.js("window.__fs.rect(4)")
    page.b.mouse("mouseMoved", r["x"] + r["width"] - 10, r["y"] + r["height"] / 2)
    hover = page.wait("window.__fs.pixels(4).hover")
    assert hover.startswith("step 6: σ = 0.0599"), hover
    page.park_mouse()
    assert not page.new_problems(), page.new_problems()


def test_light_and_dark_screenshots(page):
    for palette in ("light", "dark"):
        page.set_palette(palette)
        for node_id in (*LIVE, 4):
            px = wait_graph(page, node_id, f"p.theme === '{palette}' && p.state === 'ok'")
            bg, fg, curve, stop = (px["colors"][k] for k in ("bg", "fg", "curve", "stop"))
            assert contrast(curve, bg) >= 3.0 and contrast(stop, bg) >= 3.0, (palette, px["colors"])
            assert contrast(fg, bg) >= 4.5, (palette, px["colors"])
            assert px["curve"] > 150
        page.park_mouse()
        shot = page.screenshot(f"sigma_graphs_{palette}.png", page.js("window.__fs.nodesRect([1, 2, 3, 4, 5])"))
        img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        curve = np.asarray(page.pixels(3)["colors"]["curve"][:3])
        assert (np.abs(img - curve).sum(axis=2) <= 60).sum() > 600  # four curves on the screen
        page.screenshot(f"full_{palette}.png")
    page.set_palette("light")
    assert not page.new_problems(), page.new_problems()


# the recipe templates (node 4 is the recipe); other templates are checked by the server tests
TEMPLATES = sorted(p.stem for p in (REPO / "example_workflows").glob("fewstep_sd*.json"))
API = "window.comfyAPI.api.api"


def load_template(page, name: str) -> dict:
    """The template fetched from the template route and loaded into the editor, every node type known
    to it; returns its API twin."""
    workflow = page.js(f"{API}.fetchApi('/workflow_templates/ComfyUI-FewStep/{name}.json').then(r => r.json())")
    page.load(workflow)
    unknown = page.js(f"{APP}.graph.nodes.filter(n => !window.LiteGraph.registered_node_types[n.type]).map(n => n.type)")
    assert not unknown, (name, unknown)
    return json.loads((REPO / "example_workflows" / "api" / f"{name}_api.json").read_text())


def assert_queues_as(page, name: str, twin: dict, twin_has_every_pack_input=True):
    """The editor's prompt is the twin: same nodes, the twin's inputs at its values. The editor may
    send more: a newer host's stock node's new input, and (where the twin leaves them out) a pack
    node's optional widgets at their defaults."""
    prompt = page.js(f"{APP}.graphToPrompt().then(p => p.output)")
    assert {k: v["class_type"] for k, v in prompt.items()} == {k: v["class_type"] for k, v in twin.items()}
    for key, node in twin.items():
        got = prompt[key]["inputs"]
        extra = set(got) - set(node["inputs"])
        assert not (extra and twin_has_every_pack_input and node["class_type"].startswith("FewStep")), (name, key, extra)
        assert {k: got.get(k) for k in node["inputs"]} == node["inputs"], (name, key, got)


def test_templates_load_graph_their_recipe_and_queue_as_their_api_twin(page):
    """As the template browser does: the pack's templates listed by /workflow_templates, each fetched
    from the server and loaded into the editor. Every node type is known, the recipe node (id 4)
    draws its live schedule with the FreeU window, and the graph queues as its API twin."""
    listed = page.js(f"{API}.fetchApi('/workflow_templates').then(r => r.json())")
    assert set(TEMPLATES) <= set(listed.get("ComfyUI-FewStep", [])), listed
    for name in TEMPLATES:
        twin = load_template(page, name)
        steps = twin["4"]["inputs"]["steps"]
        recipe = wait_graph(page, 4, f"p.state === 'ok' && p.sigmas?.length === {steps + 1}")
        assert recipe["curve"] > 150, (name, recipe)
        assert "FreeU steps" in recipe["caption"], (name, recipe["caption"])
        assert_queues_as(page, name, twin)
    page.park_mouse()
    page.screenshot(f"template_{TEMPLATES[-1]}.png")
    assert not page.new_problems(), page.new_problems()


def test_finetune_example_loads_and_queues_as_its_api_twin(page):
    """The fine-tune example (scripts/workflow_templates.py) from the template route: every node type
    known to the editor, and the graph queues as its API twin (list input and sigmas output wired)."""
    name = "fewstep_finetune_sd15_512"
    assert_queues_as(page, name, load_template(page, name), twin_has_every_pack_input=False)
    assert not page.new_problems(), page.new_problems()


def test_distilled_timesteps_graph_marks_trained_sigmas_and_far_steps(page):
    """After a run the Distilled Timesteps node (id 9 of the guidance template) draws the preset's
    trained σ as faint lines with a legend, and rings the steps far from them. SDXL-Lightning at 8
    steps on a 4-step checkpoint: steps 1, 3, 5, 7 are far (tests/test_distilled_comfy.py has the
    rule); at 4 steps every step is a trained one and no ring is drawn."""
    workflow = json.loads((REPO / "example_workflows" / "fewstep_guidance_window.json").read_text())
    page.load(workflow)

    def run(steps):
        page.js("(() => { const n = window.__fs.node(9); const set = (k, v) => { n.widgets.find(w => w.name === k)"
                f".value = v; }}; set('preset', 'sdxl_lightning'); set('steps', {steps}); set('trained_steps', 4); "
                "return true; })()")
        page.js(f"{APP}.queuePrompt(0, 1)")
        px = wait_graph(page, 9, f"p.state === 'ok' && p.sigmas?.length === {steps + 1}", 240)
        colors = px["colors"]
        bg, trained = colors["bg"], colors["trained"]
        faint = [round(0.55 * a + 0.45 * b) for a, b in zip(trained[:3], bg[:3])]  # the lines' alpha 0.55
        counts = {"faint": page.js(f"window.__fs.count(9, {json.dumps(faint)}, 40)"),
                  "trained": page.js(f"window.__fs.count(9, {json.dumps(trained[:3])}, 40)"),
                  "far": page.js(f"window.__fs.count(9, {json.dumps(colors['far'][:3])}, 30)")}
        return px, counts

    px, marks = run(8)
    assert px["sigmas"][0] == pytest.approx(14.6146, rel=1e-4) and px["sigmas"][-1] == 0
    assert marks["faint"] > 300 and marks["trained"] > 20, marks   # 4 trained lines and the legend
    assert marks["far"] > 100, marks                                 # 4 rings and the note
    page.park_mouse()
    page.screenshot("distilled_far.png", page.js("window.__fs.nodesRect([9])"))
    px, on_grid = run(4)
    assert on_grid["faint"] > 300 and on_grid["trained"] > 20, on_grid
    assert on_grid["far"] == 0, on_grid
    print(f"\ndistilled graph pixels, 8 steps (4 far): {marks}; 4 trained steps: {on_grid}")
    assert not page.new_problems(), page.new_problems()


def luminance(rgb):
    def ch(v):
        v /= 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
    r, g, b = (ch(v) for v in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a, b):
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)
