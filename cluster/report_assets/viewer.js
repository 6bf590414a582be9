// Interactive view of a result's mesh, drawn on a 2D canvas: no WebGL, no network, no library.
// Each <canvas data-mesh="ID"> shows window.RECON_MESHES[ID] = {v: [x,y,z,...], f: [i,j,k,...], c: [r,g,b,...]}
// (mesh frame: x right, y up, z towards the viewer). Drag to turn it, wheel to zoom. Triangles are
// painted back to front, each with its vertices' mean albedo under a fixed head light.
(function () {
  "use strict";

  function setup(canvas, mesh) {
    var ctx = canvas.getContext("2d");
    var n = mesh.v.length / 3, m = mesh.f.length / 3;
    var cx = 0, cy = 0, cz = 0, i;
    for (i = 0; i < n; i++) { cx += mesh.v[3 * i]; cy += mesh.v[3 * i + 1]; cz += mesh.v[3 * i + 2]; }
    cx /= n; cy /= n; cz /= n;
    var radius = 1e-9;
    for (i = 0; i < n; i++) {
      var dx = mesh.v[3 * i] - cx, dy = mesh.v[3 * i + 1] - cy;
      radius = Math.max(radius, Math.sqrt(dx * dx + dy * dy));
    }
    var yaw = 0.5, pitch = 0.25, zoom = 1.0;
    var px = new Float32Array(n), py = new Float32Array(n), pz = new Float32Array(n);
    var order = new Uint32Array(m), depth = new Float32Array(m);

    function draw() {
      var w = canvas.width, h = canvas.height, s = zoom * 0.45 * Math.min(w, h) / radius;
      var cyw = Math.cos(yaw), syw = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
      for (var k = 0; k < n; k++) {
        var x = mesh.v[3 * k] - cx, y = mesh.v[3 * k + 1] - cy, z = mesh.v[3 * k + 2] - cz;
        var x1 = cyw * x + syw * z, z1 = -syw * x + cyw * z;   // yaw about y
        var y2 = cp * y - sp * z1, z2 = sp * y + cp * z1;      // pitch about x
        px[k] = w / 2 + s * x1; py[k] = h / 2 - s * y2; pz[k] = z2;
      }
      for (var t = 0; t < m; t++) {
        order[t] = t;
        depth[t] = pz[mesh.f[3 * t]] + pz[mesh.f[3 * t + 1]] + pz[mesh.f[3 * t + 2]];
      }
      var sorted = Array.prototype.slice.call(order).sort(function (a, b) { return depth[a] - depth[b]; });
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(0, 0, w, h);
      for (var q = 0; q < m; q++) {
        var f = sorted[q], a = mesh.f[3 * f], b = mesh.f[3 * f + 1], c = mesh.f[3 * f + 2];
        // face normal in screen space (y down): its z component is how much it faces the viewer
        var ux = px[b] - px[a], uy = py[b] - py[a], uz = pz[b] - pz[a];
        var vx = px[c] - px[a], vy = py[c] - py[a], vz = pz[c] - pz[a];
        var nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
        var len = Math.sqrt(nx * nx + ny * ny + nz * nz) || 1;
        var light = 0.25 + 0.75 * Math.abs(nz / len);
        var r = (mesh.c[3 * a] + mesh.c[3 * b] + mesh.c[3 * c]) / 3 * light;
        var g = (mesh.c[3 * a + 1] + mesh.c[3 * b + 1] + mesh.c[3 * c + 1]) / 3 * light;
        var bl = (mesh.c[3 * a + 2] + mesh.c[3 * b + 2] + mesh.c[3 * c + 2]) / 3 * light;
        ctx.fillStyle = "rgb(" + (r | 0) + "," + (g | 0) + "," + (bl | 0) + ")";
        ctx.strokeStyle = ctx.fillStyle;
        ctx.beginPath();
        ctx.moveTo(px[a], py[a]); ctx.lineTo(px[b], py[b]); ctx.lineTo(px[c], py[c]);
        ctx.closePath();
        ctx.fill();
        ctx.stroke();  // closes the hairline gaps between neighbouring triangles
      }
      canvas.setAttribute("data-drawn", String(m));
      // where it drew, in page pixels: lets a headless browser test find the view in a screenshot
      var box = canvas.getBoundingClientRect();
      canvas.setAttribute("data-rect", [box.left + window.scrollX, box.top + window.scrollY, box.width,
                                        box.height].map(Math.round).join(","));
    }

    var dragging = false, lastX = 0, lastY = 0;
    canvas.addEventListener("mousedown", function (e) { dragging = true; lastX = e.clientX; lastY = e.clientY; });
    window.addEventListener("mouseup", function () { dragging = false; });
    window.addEventListener("mousemove", function (e) {
      if (!dragging) return;
      yaw += (e.clientX - lastX) * 0.01;
      pitch = Math.max(-1.5, Math.min(1.5, pitch + (e.clientY - lastY) * 0.01));
      lastX = e.clientX; lastY = e.clientY;
      draw();
    });
    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      zoom = Math.max(0.2, Math.min(5, zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1)));
      draw();
    }, { passive: false });
    draw();
  }

  window.addEventListener("load", function () {
    var canvases = document.querySelectorAll("canvas[data-mesh]"), drawn = 0;
    for (var i = 0; i < canvases.length; i++) {
      var mesh = (window.RECON_MESHES || {})[canvases[i].getAttribute("data-mesh")];
      if (mesh) { setup(canvases[i], mesh); drawn++; }
      else console.error("recon viewer: no mesh data for " + canvases[i].getAttribute("data-mesh"));
    }
    console.log("recon viewer: " + drawn + " mesh view(s) drawn");
  });
})();
