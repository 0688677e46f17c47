// Starts the vendored Swagger UI on the schema named by the page (no inline script: the page's policy allows
// only this origin). A key the dashboard holds in this tab's session storage is offered as the Bearer key.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  const ui = window.SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null,
    persistAuthorization: false,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    onComplete: () => {
      const key = window.sessionStorage.getItem("tunewright.key");
      if (key) ui.preauthorizeApiKey("bearer", key);
      root.dataset.ready = "true";
    },
  });
  window.tunewrightDocs = ui;
});
