// Trained-timestep marks for the Distilled Timesteps node's σ graph (imported by sigma_graph.js;
// no side effects, so the frontend loading it as an extension module of its own is harmless).
// Drawn only when the node's UI message carries the trained σ (bridge/distilled.py distilled_ui).
export const TRAINED_KEY = "fewstep_trained_sigmas";
export const FAR_KEY = "fewstep_far_steps";

export function trainedColors(light) {
  return {
    trained: light ? "#1e8c3a" : "#5fe08a",
    far: light ? "#d0021b" : "#ff4f4f",
  };
}

// Faint full-width lines at each trained σ, so a point off every line reads as off-training.
export function drawTrained(ctx, data, t, box) {
  const trained = data.trained ?? [];
  if (!trained.length) return;
  const c = trainedColors(t.light);
  const { X, Y, x0, x1, y0, y1 } = box;
  ctx.save();
  ctx.strokeStyle = c.trained;
  ctx.globalAlpha = 0.55;
  ctx.lineWidth = 1.5;
  for (const s of trained) {
    if (!(s > 0)) continue;
    const y = Y(s);
    if (y < y0 || y > y1) continue;
    ctx.beginPath();
    ctx.moveTo(x0, y);
    ctx.lineTo(x1, y);
    ctx.stroke();
  }
  ctx.globalAlpha = 1;
  ctx.fillStyle = c.trained;
  ctx.fillRect(x1 - 58, y0 + 3, 10, 3);
  ctx.textAlign = "left";
  ctx.fillText("trained", x1 - 44, y0 + 5);
  const far = (data.far ?? []).filter((i) => data.sigmas[i] > 0);
  if (far.length) {
    ctx.strokeStyle = c.far;
    ctx.lineWidth = 2;
    for (const i of far) {
      ctx.beginPath();
      ctx.arc(X(i), Y(data.sigmas[i]), 6, 0, Math.PI * 2);
      ctx.stroke();
    }
    ctx.fillStyle = c.far;
    ctx.fillText(`${far.length} step${far.length > 1 ? "s" : ""} far from trained timesteps`, x0 + 6, y1 - 8);
  }
  ctx.restore();
}
