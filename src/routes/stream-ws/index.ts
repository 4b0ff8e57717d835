// WebSocket /v1/stream — the client sends a chat-completions body as one JSON text message and
// receives every `chat.completion.chunk` as one message, then the text `[DONE]`. Errors arrive as
// the usual `{error:{…}}` envelope (then `[DONE]`). One request at a time per socket; the socket
// stays open for the next one. Closing the socket aborts the request in flight. Chunks are sent as
// they come; a client that leaves more than --max-stream-buffer-bytes unread is disconnected, which
// aborts its request, as for SSE (src/server/sse.ts).
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Compile } from 'typebox/compile';
import type { AdmissionTicket } from '../../server/admission.ts';
import { InvalidRequestError, toApiError, validationError } from '../../server/errors.ts';
import { INLINE_MAX_BYTES } from '../../server/json-body.ts';
import type { DerivedPrompt } from '../common/prompt-context.ts';
import { beginSocketLifetime } from '../../server/request-lifetime.ts';
import { generationEvents } from '../common/generation-reply.ts';
import { chatChunks } from '../chat-completions/format.ts';
import { prepareChat } from '../chat-completions/prepare.ts';
import { ChatCompletionRequest } from '../chat-completions/schema.ts';

/** The part of a `ws` WebSocket used here. */
interface Socket {
  readonly readyState: number;
  readonly OPEN: number;
  /** Bytes queued by send() and not yet written to the network. */
  readonly bufferedAmount: number;
  send(data: string, cb?: (err?: Error) => void): void;
  terminate(): void;
}

const checkChat = Compile(ChatCompletionRequest);
const utf8 = new TextDecoder('utf-8', { fatal: true });

function parseMessage(data: Buffer | ArrayBuffer | Buffer[]): ChatCompletionRequest {
  const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(bytes));
  } catch {
    throw new InvalidRequestError('message is not valid UTF-8 JSON', null, 'invalid_json');
  }
  if (!checkChat.Check(value)) throw validationError([...checkChat.Errors(value)]);
  return value;
}

function messageBytes(data: Buffer | ArrayBuffer | Buffer[]): number {
  return Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : data.byteLength;
}

/** Slices a large message is handed to the prompt worker in, one per turn of the event loop. */
const SLICE_BYTES = 64 * 1024;

/**
 * The request in a message: parsed here when small; a large one is parsed, validated and tokenized by
 * the prompt worker (as a large HTTP body is), which also gives its prompt.
 */
async function readMessage(app: FastifyInstance, data: Buffer | ArrayBuffer | Buffer[]): Promise<{ body: ChatCompletionRequest; derived: DerivedPrompt | null }> {
  if (messageBytes(data) < INLINE_MAX_BYTES) return { body: parseMessage(data), derived: null };
  const session = app.promptWorker.begin('/v1/chat/completions');
  if (session === null) return { body: parseMessage(data), derived: null };
  try {
    for (const part of Array.isArray(data) ? data : [Buffer.from(data as ArrayBuffer)]) {
      for (let at = 0; at < part.length; at += SLICE_BYTES) {
        session.push(part.subarray(at, at + SLICE_BYTES));
        await nextTurn();
      }
    }
  } catch (err) {
    session.abort();
    throw err;
  }
  const parsed = await session.end();
  // The pipeline validated the body against ChatCompletionRequest and derived its prompt.
  return { body: parsed.body as ChatCompletionRequest, derived: parsed.derived as DerivedPrompt };
}

function send(socket: Socket, payload: unknown): Promise<void> {
  if (socket.readyState !== socket.OPEN) return Promise.resolve();
  const text = typeof payload === 'string' ? payload : JSON.stringify(payload);
  return new Promise((resolve) => socket.send(text, () => resolve()));
}

const streamWsRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/v1/stream', { websocket: true }, (socket, request) => {
    let busy = false;
    socket.on('message', (data: Buffer | ArrayBuffer | Buffer[]) => {
      if (busy) {
        void send(socket, new InvalidRequestError('a request is already running on this socket', null, 'busy').toEnvelope());
        return;
      }
      busy = true;
      const life = beginSocketLifetime(app, socket);
      let ticket: AdmissionTicket | null = null;
      // Held only until the request is read: the generation that follows keeps no copy of the message.
      let raw: typeof data | null = data;
      void (async () => {
        try {
          ticket = app.admission.admit(messageBytes(raw as typeof data), 'messages');
          const message = await readMessage(app, raw as typeof data);
          raw = null;
          // A socket always streams: `stream` is implied, so stream_options and return_progress apply.
          const prepared = await prepareChat(app, { ...message.body, stream: true }, ticket, message.derived);
          const events = generationEvents(app, prepared, life.signal);
          const maxBufferBytes = app.serverConfig.maxStreamBufferBytes;
          for await (const chunk of chatChunks(events, prepared.format, prepared.streamOptions)) {
            if (socket.readyState !== socket.OPEN) break;
            socket.send(JSON.stringify(chunk));
            if (socket.bufferedAmount > maxBufferBytes) {
              request.log.warn({ bufferedBytes: socket.bufferedAmount, maxBufferBytes }, 'the client stopped reading its stream: disconnected, request aborted');
              socket.terminate(); // a client that does not read would not read a close frame either
              break;
            }
          }
        } catch (err) {
          const { apiError, isFault } = toApiError(err);
          if (isFault) request.log.error({ err }, 'websocket request failed');
          await send(socket, apiError.toEnvelope());
        } finally {
          ticket?.release();
          life.release();
          busy = false;
        }
        await send(socket, '[DONE]');
      })();
    });
  });
};

export default streamWsRoute;
