// The decorators buildApp (src/main/app.ts) sets on the Fastify instance and every route reads,
// typed once here in the server layer so that routes depend on server types, not on the
// composition root above them.
import type { ServerConfig } from './config.ts';
import type { Admission, AdmissionTicket } from './admission.ts';
import type { OpenSockets } from './open-sockets.ts';
import type { ChatAssets, MetricsPort, TokenizerPort } from './ports.ts';
import type { ServingState } from './serving-state.ts';

declare module 'fastify' {
  interface FastifyInstance {
    readonly serving: ServingState;
    readonly tokenizer: TokenizerPort;
    readonly chatAssets: ChatAssets;
    readonly serverConfig: ServerConfig;
    readonly metrics: MetricsPort;
    readonly appVersion: string;
    /** Every TCP connection of the server (upgraded ones too), for shutdown. */
    readonly openSockets: OpenSockets;
    /** Budgets of waiting requests and prompt tokens (admission.ts). */
    readonly admission: Admission;
  }
  interface FastifyRequest {
    /** This request's claim on the admission budgets (routes with `config.admission`), or null. */
    admissionTicket: AdmissionTicket | null;
    /** What a LargeBodyParser derived from a large body (json-body.ts; the route knows its shape), or null. */
    derivedBody: unknown;
  }
  interface FastifyContextConfig {
    /** Generation routes: admitted against the waiting budgets before the body is read; names the prompt field. */
    readonly admission?: 'messages' | 'prompt';
  }
}
