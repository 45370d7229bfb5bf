//! EndpointSlice and Endpoints controllers.
