/* The API documentation page (/api/docs): Swagger UI on the OpenAPI document. An external file because the
   Content-Security-Policy allows no inline script. */
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The validator badge would load an image from validator.swagger.io: no third-party origin on our pages.
    validatorUrl: null,
    // Keep the bearer token typed into "Authorize" in memory only, never in localStorage.
    persistAuthorization: false,
    defaultModelsExpandDepth: 0,
    layout: "BaseLayout"
  });
})();
